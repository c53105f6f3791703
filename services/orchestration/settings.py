"""Settings of the orchestration service."""

from __future__ import annotations

import dataclasses

from callisto.services.common.config import CommonSettings, setting


@dataclasses.dataclass(frozen=True)
class OrchestrationSettings(CommonSettings):
    """What the orchestration process reads from the environment."""

    # Where the services it calls on a tenant's behalf listen (direct, not through the gateway,
    # which strips the on-behalf-of header).
    persistence_target: str = setting(
        "CALLISTO_PERSISTENCE_TARGET", "127.0.0.1:50051", "Persistence service address (host:port)."
    )
    generation_target: str = setting(
        "CALLISTO_GENERATION_TARGET", "127.0.0.1:50052", "Generation service address (host:port)."
    )
    retrieval_target: str = setting(
        "CALLISTO_RETRIEVAL_TARGET", "127.0.0.1:50053", "Retrieval service address (host:port)."
    )
    default_model: str = setting(
        "CALLISTO_ORCHESTRATION_DEFAULT_MODEL",
        "models/llm",
        "Model of agents that name none.",
    )

    # --- runs (event log, checkpoints, leases, budgets) ---

    # --- tools ---

    # --- assistant loop ---
