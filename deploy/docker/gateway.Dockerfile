# syntax=docker/dockerfile:1.7
# Gateway service image (asr.gateway.v1): no models, no ML libraries.
# Build from the repository root (the build context), BuildKit required:
#   docker build -f deploy/docker/gateway.Dockerfile -t asr-mesh/gateway:0.1.0 .
# Multi-stage: `build` installs the client wheel (it builds the protobuf stubs) and the project
# wheel with only the `gateway` extra into /opt/venv; the runtime stage copies that venv onto a
# clean slim image and runs as the unprivileged user 10001 (Kubernetes: runAsNonRoot, read-only
# root filesystem; writable /tmp and /var/lib/asr-mesh come from emptyDir volumes).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheels need: the server (root) and the client distribution (clients/), which
# generates the gRPC stubs from protos/ while it builds (its hatch hook runs grpcio-tools).
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY asr_mesh/services/ asr_mesh/services/
COPY clients/ clients/
RUN python -m venv /opt/venv && /opt/venv/bin/pip install ./clients ".[gateway]"

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 asr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin asr \
 && install -d -o 10001 -g 10001 /var/lib/asr-mesh
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    PYANNOTE_METRICS_ENABLED=false \
    ASR_STATE_DIR=/var/lib/asr-mesh \
    ASR_GATEWAY_HOST=0.0.0.0 \
    ASR_GATEWAY_PORT=50051 \
    ASR_GATEWAY_METRICS_PORT=9464
USER 10001:10001
WORKDIR /var/lib/asr-mesh
EXPOSE 50051 9464
ENTRYPOINT ["python", "-m", "asr_mesh.services.gateway"]
