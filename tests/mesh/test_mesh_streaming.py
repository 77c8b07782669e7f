"""Streaming through the whole mesh: gateway → transcription, SDK and `asr stream`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asr_mesh.client.sdk import StreamOptions
from support.metrics import wer

pytestmark = pytest.mark.mesh

REPO = Path(__file__).resolve().parents[2]


def pcm_chunks(path: Path, speed: float):
    from faster_whisper import decode_audio

    pcm = (decode_audio(str(path)) * 32768.0).round().astype("<i2").tobytes()
    for offset in range(0, len(pcm), 3200):  # 100 ms
        yield pcm[offset : offset + 3200]
        time.sleep(0.1 / speed)


def test_one_stream_through_the_gateway_with_one_trace(client, corpus, manifest, mesh_state):
    conv = manifest["dia"][1]
    started = time.time_ns()
    events = list(client.stream(pcm_chunks(corpus / conv["audio"], speed=4.0), StreamOptions()))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "summary" and kinds.index("interim") < kinds.index("final")
    text = " ".join(e.final.segment.text for e in events if e.HasField("final"))
    assert wer([conv["text"]], [text]) < 0.4, text

    # One trace: the gateway's server span is the root, the transcription service's session and
    # one span per decode step hang below it.
    deadline = time.monotonic() + 10
    while True:
        spans = [
            json.loads(line)
            for path in (mesh_state / "traces").glob("*.jsonl")
            for line in path.read_text().splitlines()
        ]
        roots = [
            s
            for s in spans
            if s["service"] == "gateway"
            and s["kind"] == "SERVER"
            and s["name"].endswith("StreamingTranscribe")
            and s["start_ns"] >= started
        ]
        mine = [s for s in spans if roots and s["trace_id"] == roots[-1]["trace_id"]]
        steps = [s for s in mine if s["name"] == "transcription.stream_step"]
        if (roots and len(steps) >= events[-1].summary.decode_steps) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(roots) == 1
    assert {s["service"] for s in mine if s["kind"] == "SERVER"} == {"gateway", "transcription"}
    assert len(steps) >= events[-1].summary.decode_steps > 0


def test_cli_stream_prints_jsonl_events(mesh, corpus, manifest):
    clip = manifest["asr"][0]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr_mesh.client.cli",
            "stream",
            str(corpus / clip["audio"]),
            "--format",
            "jsonl",
            "--server",
            mesh.gateway_address,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(set(line) == {"type", "text", "start", "end", "received_s"} for line in lines)
    finals = [line for line in lines if line["type"] == "final"]
    assert finals and all(f["start"] <= f["end"] for f in finals)
    assert "bom dia" in " ".join(f["text"] for f in finals).lower()


def test_cli_stream_refuses_a_missing_file_in_one_line(mesh, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr_mesh.client.cli",
            "stream",
            str(tmp_path / "missing.wav"),
            "--server",
            mesh.gateway_address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "missing.wav: no such file" in proc.stderr


def test_cli_stream_without_server_starts_a_local_mesh(corpus, manifest, tmp_path):
    """`asr stream FILE` with no --server uses (and here starts) the local mesh, like transcribe."""
    clip = manifest["asr"][0]
    state = tmp_path / "state"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "asr_mesh.client.cli",
                "stream",
                str(corpus / clip["audio"]),
                "--format",
                "jsonl",
                "--state-dir",
                str(state),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
    finally:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "asr_mesh.client.cli",
                "serve",
                "--stop",
                "--state-dir",
                str(state),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    finals = [json.loads(line) for line in proc.stdout.splitlines() if '"final"' in line]
    assert "bom dia" in " ".join(f["text"] for f in finals).lower()
