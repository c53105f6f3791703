"""The TypeScript client's own tests (clients/typescript/test, Vitest in Node) against the live
mesh through Envoy's gRPC-Web filter."""

from __future__ import annotations

from node_support import EmbeddedMesh, run_vitest


def test_the_typescript_client_suite_passes_against_the_live_mesh(
    embedded_mesh: EmbeddedMesh,
) -> None:
    output = run_vitest(
        "typescript",
        [],
        {
            "CALLISTO_GATEWAY_URL": embedded_mesh.gateway_url,
            "CALLISTO_API_KEY": embedded_mesh.demo_key,
            "CALLISTO_OTHER_API_KEY": embedded_mesh.key("conference-demo"),
        },
    )
    print(output)
