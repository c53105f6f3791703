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
    model_prices: str = setting(
        "CALLISTO_ORCHESTRATION_MODEL_PRICES",
        "",
        'Prices per 1M tokens as JSON, `{"models/llm": {"prompt": 0.1, "completion": 0.4}}`; '
        "models it leaves out keep the built-in prices (models/llm, models/toy_llm).",
    )
    token_coalesce_ms: float = setting(
        "CALLISTO_ORCHESTRATION_TOKEN_COALESCE_MS",
        25.0,
        "Milliseconds answer text is gathered into one `token` event after a turn's first one.",
    )
    run_lease_s: float = setting(
        "CALLISTO_ORCHESTRATION_RUN_LEASE_S",
        6.0,
        "Seconds a run's owner holds its lease; it renews it every third of that, and another "
        "process takes the run over once it lapses.",
    )
    run_takeover_interval_s: float = setting(
        "CALLISTO_ORCHESTRATION_RUN_TAKEOVER_INTERVAL_S",
        2.0,
        "Seconds between looks for unfinished runs whose lease lapsed.",
    )
    max_prompt_chars: int = setting(
        "CALLISTO_ORCHESTRATION_MAX_PROMPT_CHARS",
        16384,
        "Longest prompt or human turn, in characters.",
    )
    forward_model_extras: bool = setting(
        "CALLISTO_ORCHESTRATION_FORWARD_MODEL_EXTRAS",
        False,
        "Pass a run's `x-callisto-model-extras` call metadata (a JSON object of toy-model "
        "options, for tests and benchmarks) on to its generations; off ignores it.",
    )

    # --- tools ---
    tool_attempts: int = setting(
        "CALLISTO_TOOL_ATTEMPTS", 3, "Attempts of a tool call that fails transiently."
    )
    tool_retry_base_s: float = setting(
        "CALLISTO_TOOL_RETRY_BASE_S",
        1.0,
        "First wait between tool attempts in seconds; doubles per attempt, plus jitter.",
    )
    tool_breaker_failures: int = setting(
        "CALLISTO_TOOL_BREAKER_FAILURES",
        5,
        "Consecutive failed calls of a tool that open its circuit breaker.",
    )
    tool_breaker_cooldown_s: float = setting(
        "CALLISTO_TOOL_BREAKER_COOLDOWN_S",
        30.0,
        "Seconds an open tool breaker refuses calls before letting one trial call through.",
    )
    tool_cache_entries: int = setting(
        "CALLISTO_TOOL_CACHE_ENTRIES", 1024, "Most cached results kept per cacheable tool."
    )
    tool_max_argument_bytes: int = setting(
        "CALLISTO_TOOL_MAX_ARGUMENT_BYTES",
        16384,
        "Largest arguments object of a tool call, as compact JSON, in bytes.",
    )
    tool_max_argument_depth: int = setting(
        "CALLISTO_TOOL_MAX_ARGUMENT_DEPTH", 8, "Deepest nesting of a tool call's arguments."
    )

    # --- assistant loop ---
    assistant_max_sources: int = setting(
        "CALLISTO_ASSISTANT_MAX_SOURCES",
        4,
        "Most retrieved passages an answer is given as numbered sources `[1]…[n]`.",
    )
    assistant_passage_chars: int = setting(
        "CALLISTO_ASSISTANT_PASSAGE_CHARS",
        160,
        "Characters of each source passage the answering model reads: the small CPU model "
        "answers from a few short passages and loops on long ones.",
    )
    assistant_answer_max_tokens: int = setting(
        "CALLISTO_ASSISTANT_ANSWER_MAX_TOKENS", 160, "Most tokens of a streamed answer."
    )
    assistant_brief_max_tokens: int = setting(
        "CALLISTO_ASSISTANT_BRIEF_MAX_TOKENS",
        48,
        "Most tokens of the sentence the model adds to an answer that lists entities.",
    )
    assistant_step_max_tokens: int = setting(
        "CALLISTO_ASSISTANT_STEP_MAX_TOKENS",
        160,
        "Most tokens of each structured step (understand, plan, reflect).",
    )
    assistant_max_calls: int = setting(
        "CALLISTO_ASSISTANT_MAX_CALLS", 2, "Most tool calls one round's plan may make."
    )
    assistant_history_messages: int = setting(
        "CALLISTO_ASSISTANT_HISTORY_MESSAGES",
        4,
        "Earlier messages of the conversation the understand and respond steps read.",
    )
    assistant_question_chars: int = setting(
        "CALLISTO_ASSISTANT_QUESTION_CHARS",
        1500,
        "Most characters of a human turn (and of each earlier message) the prompts carry; the "
        "rest is cut so a long turn still fits the model's context.",
    )
    assistant_temperature: float = setting(
        "CALLISTO_ASSISTANT_TEMPERATURE",
        0.0,
        "Sampling temperature of the structured steps (0: greedy, reproducible).",
    )
    assistant_answer_temperature: float = setting(
        "CALLISTO_ASSISTANT_ANSWER_TEMPERATURE",
        0.0,
        "Sampling temperature of the streamed answer (0: greedy; over a few short sources the "
        "small CPU model then keeps to them best).",
    )
    assistant_answer_persona: bool = setting(
        "CALLISTO_ASSISTANT_ANSWER_PERSONA",
        False,
        "Give the answering model the agent's whole system prompt; off, it gets one line of "
        "role (the small CPU model follows a short instruction far better than a long one).",
    )
    assistant_answer_seed: int = setting(
        "CALLISTO_ASSISTANT_ANSWER_SEED",
        1,
        "Sampling seed of the streamed answer, so the same prompt gets the same answer.",
    )

    # --- simulations ---
    simulation_turn_max_tokens: int = setting(
        "CALLISTO_SIMULATION_TURN_MAX_TOKENS",
        160,
        "Most completion tokens of one agent turn when the run does not say "
        "(`simulation.max_turn_tokens`).",
    )
    simulation_temperature: float = setting(
        "CALLISTO_SIMULATION_TEMPERATURE",
        0.7,
        "Sampling temperature of agent turns (a conversation needs some variety).",
    )
    simulation_repetition_penalty: float = setting(
        "CALLISTO_SIMULATION_REPETITION_PENALTY",
        1.3,
        "Repetition penalty of agent turns (1: none; the small CPU model loops on its own words"
        " without one).",
    )
    simulation_history_turns: int = setting(
        "CALLISTO_SIMULATION_HISTORY_TURNS",
        8,
        "Latest turns of the conversation each agent turn reads.",
    )
    simulation_turn_chars: int = setting(
        "CALLISTO_SIMULATION_TURN_CHARS",
        600,
        "Most characters of each earlier turn (and of the scenario) a turn's prompt carries.",
    )
    simulation_sources: int = setting(
        "CALLISTO_SIMULATION_SOURCES",
        3,
        "Passages of its own company's documents an agent with `search_documents` reads per turn.",
    )
    simulation_human_timeout_s: float = setting(
        "CALLISTO_SIMULATION_HUMAN_TIMEOUT_S",
        300.0,
        "How long a simulation waits for a human turn when the run does not say.",
    )
    simulation_max_concurrent_turns: int = setting(
        "CALLISTO_SIMULATION_MAX_CONCURRENT_TURNS",
        64,
        "Agent turns this process generates at once; more wait their turn.",
    )

    # --- agent suggestion ---
    suggest_max_tokens: int = setting(
        "CALLISTO_SUGGEST_MAX_TOKENS",
        900,
        "Most tokens of one SuggestAgents generation (all the agents with their prompts).",
    )
    suggest_retries: int = setting(
        "CALLISTO_SUGGEST_RETRIES",
        2,
        "Further model attempts after an unusable suggestion, before the role-based template.",
    )
    suggest_temperature: float = setting(
        "CALLISTO_SUGGEST_TEMPERATURE",
        0.2,
        "Sampling temperature of agent suggestion.",
    )
    suggest_timeout_s: float = setting(
        "CALLISTO_SUGGEST_TIMEOUT_S",
        60.0,
        "Seconds SuggestAgents spends on model attempts (less when the call's deadline is"
        " sooner); then the role-based template answers.",
    )

    # --- workflows ---
    workflow_max_concurrent_steps: int = setting(
        "CALLISTO_WORKFLOW_MAX_CONCURRENT_STEPS",
        32,
        "Workflow steps this process runs at once over all runs (each run is bounded by its "
        "`workflow.max_parallel_steps` too).",
    )
    workflow_step_timeout_s: float = setting(
        "CALLISTO_WORKFLOW_STEP_TIMEOUT_S",
        300.0,
        "Seconds one attempt of a workflow step may take when its plan sets no `timeout`.",
    )
    workflow_retry_base_s: float = setting(
        "CALLISTO_WORKFLOW_RETRY_BASE_S",
        1.0,
        "First wait before retrying a step attempt that failed transiently; doubles per retry, "
        "plus up to half of it as jitter.",
    )
    workflow_step_max_tokens: int = setting(
        "CALLISTO_WORKFLOW_STEP_MAX_TOKENS",
        512,
        "Most tokens of a workflow step's answer.",
    )
    workflow_planner_attempts: int = setting(
        "CALLISTO_WORKFLOW_PLANNER_ATTEMPTS",
        3,
        "Model attempts the planner makes at a valid plan for a task before it asks for "
        "clarification.",
    )
    workflow_clarification_timeout_s: float = setting(
        "CALLISTO_WORKFLOW_CLARIFICATION_TIMEOUT_S",
        3600.0,
        "Seconds a workflow waits for the clarification its planner asked for; then it ends "
        "with `done(unsupported)`.",
    )
    approval_warning_fraction: float = setting(
        "CALLISTO_APPROVAL_WARNING_FRACTION",
        0.2,
        "An approval's `warning` event goes out when this share of its wait is left.",
    )

    # --- outbound HTTP (webhooks, HTTP tools) ---
    outbound_allowed_networks: str = setting(
        "CALLISTO_OUTBOUND_ALLOWED_NETWORKS",
        "",
        "Comma-separated CIDRs that webhooks and HTTP tools may reach although they are "
        "loopback, link-local or private (`127.0.0.1/32` for a local receiver); none by default.",
    )
    outbound_timeout_s: float = setting(
        "CALLISTO_OUTBOUND_TIMEOUT_S",
        10.0,
        "Seconds one webhook delivery attempt may take (connect, send, answer).",
    )
    outbound_max_redirects: int = setting(
        "CALLISTO_OUTBOUND_MAX_REDIRECTS",
        3,
        "Redirects an outbound request follows, each target checked like the first.",
    )
    outbound_max_response_bytes: int = setting(
        "CALLISTO_OUTBOUND_MAX_RESPONSE_BYTES",
        65536,
        "Most bytes of an answer read from a webhook or HTTP tool.",
    )
    webhook_max_attempts: int = setting(
        "CALLISTO_WEBHOOK_MAX_ATTEMPTS",
        5,
        "Attempts of a webhook delivery (the first included) before it is recorded as failed.",
    )
    webhook_retry_base_s: float = setting(
        "CALLISTO_WEBHOOK_RETRY_BASE_S",
        1.0,
        "First wait before a delivery's retry; doubles per retry, plus up to half of it as jitter.",
    )

    # --- tenant budgets ---
    tenant_daily_tokens: int = setting(
        "CALLISTO_TENANT_DAILY_TOKENS",
        0,
        "Tokens a tenant may spend per UTC day over all its runs (0: no limit); new runs are "
        "RESOURCE_EXHAUSTED once it is spent.",
    )
    tenant_daily_token_overrides: str = setting(
        "CALLISTO_TENANT_DAILY_TOKEN_OVERRIDES",
        "",
        'Per-tenant daily token budgets as JSON, `{"acme": 200000}`, over '
        "CALLISTO_TENANT_DAILY_TOKENS.",
    )
