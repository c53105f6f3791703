"""The TypeScript client's own tests (clients/typescript/test, Vitest in Node) against the live
mesh through Envoy's gRPC-Web filter."""

from __future__ import annotations

from node_support import LiveMesh, run_vitest


def test_the_typescript_client_suite_passes_against_the_live_mesh(live_mesh: LiveMesh) -> None:
    output = run_vitest(
        "typescript",
        [],
        {
            "CALLISTO_GATEWAY_URL": live_mesh.gateway_url,
            "CALLISTO_API_KEY": live_mesh.demo_key,
            "CALLISTO_OTHER_API_KEY": live_mesh.key("conference-demo"),
        },
    )
    print(output)
