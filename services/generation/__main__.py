"""Entry point: `python -m callisto.services.generation`."""

from callisto.services.common.server import run
from callisto.services.generation.server import build
from callisto.services.generation.settings import GenerationSettings

if __name__ == "__main__":
    run("generation", 50052, build, GenerationSettings)
