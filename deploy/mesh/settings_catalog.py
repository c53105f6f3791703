"""Every process's settings, rendered as the README's configuration table."""

from __future__ import annotations

from typing import Any

from callisto.gateway.control_plane.settings import ControlPlaneSettings
from callisto.services.common.config import CommonSettings, settings_table
from callisto.services.generation.settings import GenerationSettings
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.persistence.settings import PersistenceSettings
from callisto.services.retrieval.settings import RetrievalSettings

SECTIONS: dict[str, list[type[Any]]] = {
    "every service": [CommonSettings],
    "persistence": [PersistenceSettings],
    "generation": [GenerationSettings],
    "retrieval": [RetrievalSettings],
    "orchestration": [OrchestrationSettings],
    "control plane": [ControlPlaneSettings],
}


def configuration_table() -> str:
    return settings_table(SECTIONS)
