"""The orchestration service: agents, tools, the assistant loop and durable, resumable runs."""
