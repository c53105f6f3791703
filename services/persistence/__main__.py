"""Entry point: `python -m callisto.services.persistence`."""

from callisto.services.common.server import run
from callisto.services.persistence.server import build
from callisto.services.persistence.settings import PersistenceSettings

if __name__ == "__main__":
    run("persistence", 50051, build, PersistenceSettings)
