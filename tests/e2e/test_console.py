"""The web console in Debian's Chromium (playwright-core), served by the live mesh's gateway and
signed in with the demo key the banner prints: one test per browser test file of clients/web/tests.
Each saves screenshots of its final state under test-results/console/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from node_support import CLIENTS, REPO, EmbeddedMesh, run_vitest

BROWSER_TESTS = sorted((CLIENTS / "web" / "tests").glob("*.test.ts"))
SCREENSHOTS = REPO / "test-results" / "console"
CHROMIUM = "/usr/bin/chromium"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("suite", BROWSER_TESTS, ids=lambda path: path.name.split(".")[0])
def test_the_console_in_chromium(suite: Path, embedded_mesh: EmbeddedMesh) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: ./dev test installs Debian's chromium")
    output = run_vitest(
        "web",
        ["--config", "vitest.browser.config.ts", f"tests/{suite.name}"],
        {
            "CALLISTO_CONSOLE_URL": embedded_mesh.console_url,
            "CALLISTO_API_KEY": embedded_mesh.demo_key,
            "CALLISTO_SCREENSHOTS": str(SCREENSHOTS),
            "CALLISTO_CHROMIUM": CHROMIUM,
        },
        timeout=840,
    )
    print(output)
