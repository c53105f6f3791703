"""`python -m callisto.services.retrieval`: the retrieval service process."""

from callisto.services.common.server import run
from callisto.services.retrieval.server import build
from callisto.services.retrieval.settings import RetrievalSettings

if __name__ == "__main__":
    run("retrieval", 50053, build, RetrievalSettings)
