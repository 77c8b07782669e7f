"""Speaker error rate through the whole mesh, with and without loudness normalisation.

    .venv/bin/python benchmarks/bench_mesh_diarization.py [CORPUS_DIR]

Diarization is benchmarked on raw PCM by benchmarks/bench_diarization.py; this checks what the
default chain (preprocess loudnorm → diarization → merge's RTTM) gives against the RTTM truth
of corpus-dev's conversations. DER: pyannote.metrics, collar 0.25 s, overlap scored.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyannote.database.util import load_rttm  # noqa: E402
from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from asr_mesh.client.sdk import GatewayClient, TranscribeOptions  # noqa: E402
from asr_mesh.services.supervisor import LocalMesh  # noqa: E402


def main() -> int:
    corpus = Path(sys.argv[1] if len(sys.argv) > 1 else REPO.parent / "shared" / "corpus-dev")
    table = Table(title="DER through the mesh (collar 0.25 s)")
    for column in ("file", "loudnorm", "true speakers", "found", "DER"):
        table.add_column(column, justify="right")
    with (
        tempfile.TemporaryDirectory() as state,
        LocalMesh(state_dir=Path(state)) as mesh,
        GatewayClient(mesh.gateway_address) as client,
    ):
        for truth in sorted((corpus / "dia").glob("*.rttm")):
            [reference] = load_rttm(truth).values()
            for loudnorm in (True, False):
                options = TranscribeOptions(
                    diarize=True, formats=("rttm",), loudness_normalization=loudnorm
                )
                result = client.transcribe(truth.with_suffix(".flac"), options)
                hypothesis_file = Path(state) / f"{truth.stem}.rttm"
                hypothesis_file.write_text(result.documents[0].content, encoding="utf-8")
                [hypothesis] = load_rttm(hypothesis_file).values()
                der = DiarizationErrorRate(collar=0.25, skip_overlap=False)(reference, hypothesis)
                table.add_row(
                    truth.stem,
                    "on" if loudnorm else "off",
                    str(len(reference.labels())),
                    str(len(result.speakers)),
                    f"{der:.2%}",
                )
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
