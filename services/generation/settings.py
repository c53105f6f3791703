"""Settings of the generation service."""

from __future__ import annotations

import dataclasses

from callisto.services.common.config import CommonSettings, setting


@dataclasses.dataclass(frozen=True)
class GenerationSettings(CommonSettings):
    """What the generation process reads from the environment."""

    triton_url: str = setting(
        "CALLISTO_TRITON_URL", "127.0.0.1:8001", "Triton Inference Server gRPC address (host:port)."
    )
    default_model: str = setting(
        "CALLISTO_GENERATION_DEFAULT_MODEL",
        "models/llm",
        "Model used when a request names none; health also waits for it to be ready.",
    )
    flush_interval_ms: float = setting(
        "CALLISTO_GENERATION_FLUSH_INTERVAL_MS",
        5.0,
        "After the first token, tokens arriving within this many milliseconds of the previous "
        "delta are merged into one (0 sends every token alone).",
    )
    max_concurrent: int = setting(
        "CALLISTO_GENERATION_MAX_CONCURRENT",
        256,
        "Most generations in flight in this process; more are refused with RESOURCE_EXHAUSTED.",
    )
    default_max_tokens: int = setting(
        "CALLISTO_GENERATION_DEFAULT_MAX_TOKENS", 256, "max_tokens when a request leaves it at 0."
    )
    max_tokens_limit: int = setting(
        "CALLISTO_GENERATION_MAX_TOKENS_LIMIT",
        4096,
        "Largest max_tokens a request may ask for (the model's context window also bounds it).",
    )
    default_timeout_seconds: float = setting(
        "CALLISTO_GENERATION_DEFAULT_TIMEOUT_SECONDS",
        600.0,
        "Bound on a generation whose caller set no deadline.",
    )
    sentiment_model: str = setting(
        "CALLISTO_GENERATION_SENTIMENT_MODEL",
        "models/sentiment",
        "Model AnalyzeSentiment uses when a request names none.",
    )
    sentiment_timeout_seconds: float = setting(
        "CALLISTO_GENERATION_SENTIMENT_TIMEOUT_SECONDS",
        30.0,
        "Bound on an AnalyzeSentiment call whose caller set no deadline.",
    )
    model_extras: bool = setting(
        "CALLISTO_GENERATION_MODEL_EXTRAS",
        False,
        "Accept extra model request fields (JSON object) from the `x-callisto-model-extras` "
        "metadata, e.g. toy_llm's `delay_ms`; for tests and benchmarks only.",
    )
