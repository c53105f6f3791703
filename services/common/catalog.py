"""Every Callisto gRPC service, from the generated modules (for mesh-wide reflection)."""

from __future__ import annotations

from types import ModuleType

from callisto.generation.v1 import generation_pb2
from callisto.orchestration.v1 import orchestration_pb2
from callisto.persistence.v1 import persistence_pb2
from callisto.retrieval.v1 import retrieval_pb2

API_MODULES: tuple[ModuleType, ...] = (
    persistence_pb2,
    generation_pb2,
    retrieval_pb2,
    orchestration_pb2,
)


def service_names() -> list[str]:
    return [
        service.full_name
        for module in API_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
    ]
