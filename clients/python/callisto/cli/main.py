"""`callisto` client commands: what a client installs (no server code is imported here).

The full command line of an installation with the server side (`callisto up`, `keys`, `config`,
`gateway`, `models`) is `callisto.mesh.cli`, which adds those commands to this app.
"""

from __future__ import annotations

import typer

from callisto.cli.approvals import approvals_app
from callisto.cli.artifacts import artifacts_app
from callisto.cli.chat import chat
from callisto.cli.conversations import conversations_app
from callisto.cli.ingest import ingest
from callisto.cli.simulate import simulate
from callisto.cli.workflow import workflow_app


def client_app() -> typer.Typer:
    """A fresh Typer app holding the client commands; the server side adds its own to it."""
    app = typer.Typer(
        help="Callisto: a gRPC service mesh for streaming, retrieval-augmented conversations.",
        no_args_is_help=True,
        add_completion=False,
    )
    app.command()(ingest)
    app.command()(chat)
    app.command()(simulate)
    app.add_typer(conversations_app, name="conversations")
    app.add_typer(artifacts_app, name="artifacts")
    app.add_typer(workflow_app, name="workflow")
    app.add_typer(approvals_app, name="approvals")
    return app


app = client_app()

if __name__ == "__main__":
    app()
