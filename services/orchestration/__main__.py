"""Entry point: `python -m callisto.services.orchestration`."""

from callisto.services.common.server import run
from callisto.services.orchestration.server import build
from callisto.services.orchestration.settings import OrchestrationSettings

if __name__ == "__main__":
    run("orchestration", 50054, build, OrchestrationSettings)
