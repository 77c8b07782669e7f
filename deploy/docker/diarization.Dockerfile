# syntax=docker/dockerfile:1.7
# Diarization service image (asr.diarization.v1): CPU torch + pyannote.audio + resemblyzer.
# Build from the repository root (the build context), BuildKit required:
#   docker build -f deploy/docker/diarization.Dockerfile -t asr-mesh/diarization:0.1.0 .
# With the pyannote pipeline baked in (downloaded once ahead of time, see deploy/README.md):
#   docker build -f deploy/docker/diarization.Dockerfile \
#     --build-context pyannote=./community-1 -t asr-mesh/diarization:0.1.0 .
# The default backend (offline speaker embeddings) uses resemblyzer's encoder, which ships in
# its PyPI wheel: the image needs no download at run time either way.
# Multi-stage: `build` installs the client wheel (it builds the protobuf stubs) and the project
# wheel with only the `diarization` extra into /opt/venv; the runtime stage copies it onto a clean
# slim image and runs as the unprivileged user 10001.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# CPU wheels of torch/torchaudio (≈ 1 GB less than PyPI's CUDA build): diarization runs on CPU
# nodes. Set TORCH_INDEX_URL=https://pypi.org/simple to get PyPI's CUDA build instead.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheels need: the server (root) and the client distribution (clients/), which
# generates the gRPC stubs from protos/ while it builds (its hatch hook runs grpcio-tools).
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY asr_mesh/services/ asr_mesh/services/
COPY clients/ clients/
# torch and torchaudio at the diarization extra's pins, from the CPU index, first; the extra
# then finds them satisfied (2.11.0+cpu matches ==2.11.0).
RUN python -m venv /opt/venv \
 && python -c "import tomllib; print('\n'.join(r for r in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['diarization'] if r.startswith(('torch==', 'torchaudio=='))))" > torch.txt \
 && /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" -r torch.txt \
 && /opt/venv/bin/pip install ./clients ".[diarization]"

# ---- pyannote pipeline: empty unless --build-context pyannote=DIR replaces this stage -------
FROM scratch AS pyannote
COPY deploy/docker/pyannote/ /

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 asr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin asr \
 && install -d -o 10001 -g 10001 /var/lib/asr-mesh
COPY --from=build /opt/venv /opt/venv
# Used only when ASR_DIARIZATION_PYANNOTE_DIR=/opt/asr/pyannote (components/pyannote).
COPY --from=pyannote / /opt/asr/pyannote/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    PYANNOTE_METRICS_ENABLED=false \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    ASR_STATE_DIR=/var/lib/asr-mesh \
    ASR_DIARIZATION_HOST=0.0.0.0 \
    ASR_DIARIZATION_PORT=50051 \
    ASR_DIARIZATION_METRICS_PORT=9464
USER 10001:10001
WORKDIR /var/lib/asr-mesh
EXPOSE 50051 9464
ENTRYPOINT ["python", "-m", "asr_mesh.services.diarization"]
