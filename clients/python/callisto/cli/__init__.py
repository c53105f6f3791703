"""The `callisto` command."""
