# syntax=docker/dockerfile:1.7
# HTTP front door image (asr_mesh/services/http): FastAPI on uvicorn over the gateway's gRPC API, plus
# Debian's ffmpeg to decode browsers' WebM/Opus live audio. No models, no ML libraries.
# Build from the repository root (the build context), BuildKit required:
#   docker build -f deploy/docker/http.Dockerfile -t asr-mesh/http:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY asr_mesh/services/ asr_mesh/services/
COPY clients/ clients/
RUN python -m venv /opt/venv && /opt/venv/bin/pip install ./clients ".[http]"

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 asr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin asr \
 && install -d -o 10001 -g 10001 /var/lib/asr-mesh
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYANNOTE_METRICS_ENABLED=false \
    ASR_STATE_DIR=/var/lib/asr-mesh \
    ASR_HTTP_HOST=0.0.0.0 \
    ASR_HTTP_PORT=8080
USER 10001:10001
WORKDIR /var/lib/asr-mesh
EXPOSE 8080
ENTRYPOINT ["python", "-m", "asr_mesh.services.http"]
