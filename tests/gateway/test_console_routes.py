"""The gateway serves a built console's files itself, on its own origin, next to the APIs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from callisto.gateway.console import (
    CONTENT_SECURITY_POLICY,
    ConsoleBuildError,
    console_files,
)
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess

PERSISTENCE_SERVICE = "callisto.persistence.v1.PersistenceService"
# Larger than Envoy's default 4 KiB cap on direct responses.
BUNDLE = b"console.log('callisto');\n" * 8000


def _built_console(root: Path) -> Path:
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text('<!doctype html><script src="/console/assets/index-Ab1.js">')
    (root / "assets" / "index-Ab1.js").write_bytes(BUNDLE)
    (root / "assets" / "index-Cd2.css").write_text("body{margin:0}")
    return root


@pytest.fixture(scope="module")
def console_gateway(
    persistence: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyGateway]:
    console = _built_console(tmp_path_factory.mktemp("console"))
    gateway = EnvoyGateway.on_free_ports(
        {PERSISTENCE_SERVICE: ("127.0.0.1", persistence.port)},
        tmp_path_factory.mktemp("gateway"),
        console_dir=console,
    )
    gateway.start()
    yield gateway
    gateway.stop()


def test_the_root_and_the_bare_prefix_redirect_to_the_console(
    console_gateway: EnvoyGateway,
) -> None:
    for path in ("/", "/console"):
        answer = httpx.get(console_gateway.http_url + path)
        assert answer.status_code in (301, 302), path
        assert answer.headers["location"].endswith("/console/")


def test_the_index_is_never_cached_and_carries_a_strict_content_security_policy(
    console_gateway: EnvoyGateway,
) -> None:
    answer = httpx.get(console_gateway.http_url + "/console/")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.text.startswith("<!doctype html>")


def test_hashed_assets_larger_than_envoys_default_limit_are_served_whole_and_cached_for_good(
    console_gateway: EnvoyGateway,
) -> None:
    answer = httpx.get(console_gateway.http_url + "/console/assets/index-Ab1.js")
    assert answer.status_code == 200
    assert answer.content == BUNDLE
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "immutable" in answer.headers["cache-control"]
    css = httpx.get(console_gateway.http_url + "/console/assets/index-Cd2.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"


def test_unknown_console_paths_are_404_and_never_reach_a_service(
    console_gateway: EnvoyGateway,
) -> None:
    # Files are answered from memory (read when the config loads): an escaped dot segment
    # names no file on disk, it is just another unknown path.
    for path in (
        "/console/assets/missing.js",
        "/console/index.html.bak",
        "/console/x/y",
        "/console/%2e%2e/%2e%2e/etc/passwd",
        "/console/assets/..%2f..%2fmesh.json",
    ):
        answer = httpx.get(console_gateway.http_url + path)
        assert answer.status_code == 404, path
        assert "root:" not in answer.text, path


def test_the_apis_still_answer_beside_the_console(
    console_gateway: EnvoyGateway, api_key: str
) -> None:
    listed = httpx.get(
        console_gateway.http_url + "/v1/conversations",
        headers={"authorization": f"Bearer {api_key}"},
    )
    assert listed.status_code == 200, listed.text
    assert httpx.get(console_gateway.http_url + "/v1/conversations").status_code == 401


def test_a_console_without_an_index_or_with_unroutable_names_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConsoleBuildError, match=r"index\.html"):
        console_files(tmp_path)
    built = _built_console(tmp_path / "built")
    (built / "assets" / "bad name?.js").write_text("")
    with pytest.raises(ConsoleBuildError, match="won't route"):
        console_files(built)


def test_the_compose_and_kubernetes_gateway_serves_a_console_folder_envoy_accepts(
    tmp_path: Path,
) -> None:
    console = _built_console(tmp_path / "console")
    result = subprocess.run(
        [
            sys.executable, "-m", "callisto.gateway.envoy",
            "--control-plane", "127.0.0.1:18000",
            "--dir", str(tmp_path / "gateway"),
            "--console", str(console),
            "--validate-only",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    config = Path(result.stdout.strip()).read_text()
    assert str(console / "assets" / "index-Ab1.js") in config
