"""Settings of the persistence service (the data Redis is the common `CALLISTO_REDIS_URL`)."""

from __future__ import annotations

import dataclasses

from callisto.services.common.config import CommonSettings, setting


@dataclasses.dataclass(frozen=True)
class PersistenceSettings(CommonSettings):
    """What the persistence process reads from the environment."""

    heartbeat_seconds: float = setting(
        "CALLISTO_PERSISTENCE_HEARTBEAT_SECONDS",
        15.0,
        "How long an idle SubscribeEvents stream waits before it sends a heartbeat.",
    )
    request_id_ttl_seconds: int = setting(
        "CALLISTO_PERSISTENCE_REQUEST_ID_TTL_SECONDS",
        86400,
        "How long a CreateConversation `request_id` keeps returning the first result.",
    )
    artifact_max_bytes: int = setting(
        "CALLISTO_ARTIFACT_MAX_BYTES",
        3 * 1024 * 1024,
        "Largest artifact (report) content stored with a conversation; under "
        "CALLISTO_MAX_MESSAGE_BYTES, which bounds the message that carries it.",
    )
