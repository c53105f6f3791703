"""The tool registry and the built-in tools agents can be given."""
