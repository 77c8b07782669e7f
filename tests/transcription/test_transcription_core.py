"""Pure-core tests for transcription: language mapping, model registry, device choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidInput, UnknownModel
from services.transcription.core import auto_compute_type, whisper_language
from services.transcription.models import ModelRegistry, discover_models


@pytest.mark.parametrize(
    ("code", "expected"),
    [("pt-BR", "pt"), ("pt", "pt"), ("", "pt"), ("en-US", "en"), ("auto", None), ("PT_br", "pt")],
)
def test_bcp47_maps_to_whisper_codes(code, expected):
    assert whisper_language(code) == expected


def test_garbage_language_is_refused():
    with pytest.raises(InvalidInput, match="BCP-47"):
        whisper_language("12-xx")


def _fake_model(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"x")
    return path


def test_registry_finds_flat_and_hf_cache_layouts(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    snap = tmp_path / "models--Systran--faster-whisper-large-v3" / "snapshots"
    _fake_model(snap, "abc123")
    models = discover_models(tmp_path)
    assert models["base"].path == tmp_path / "whisper-base"
    assert models["large-v3"].path == snap / "abc123"
    assert {"whisper-base", "faster-whisper-large-v3"} <= set(models)


def test_unknown_model_lists_what_exists(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    registry = ModelRegistry(tmp_path, "base", loader=lambda *a: object())
    with pytest.raises(UnknownModel, match="available: base, whisper-base"):
        registry.resolve("large-v9")


def test_registry_shares_one_instance_per_model_device_and_type(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    loads = []
    registry = ModelRegistry(tmp_path, "base", loader=lambda spec, d, c: loads.append((spec.name, d, c)) or object())
    first = registry.get("base", "cpu", "int8")
    assert registry.get("whisper-base", "cpu", "int8") is first
    assert registry.get("", "cpu", "int8") is first
    assert registry.get("base", "cpu", "float32") is not first
    assert len(loads) == 2
    assert registry.is_loaded("base")


def test_compute_type_follows_device():
    assert auto_compute_type("auto", "cuda") == "float16"
    assert auto_compute_type("auto", "cpu") == "int8"
    assert auto_compute_type("int8_float16", "cuda") == "int8_float16"
