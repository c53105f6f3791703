"""The embedded mesh launcher (server-side tooling): supervised child processes, the Triton
environment, the gateway process, sample ingestion and the full `callisto` command line."""
