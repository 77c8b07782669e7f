"""The `asr` CLI as a user runs it: embedded mesh (what `make run` does) and `asr serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import srt

pytestmark = pytest.mark.mesh

REPO = Path(__file__).resolve().parents[2]
ASR = [sys.executable, "-m", "asr_mesh.client.cli"]


def test_embedded_mesh_transcribes_a_conversation_with_speakers(corpus, tmp_path):
    out = tmp_path / "out"
    try:
        proc = subprocess.run(
            [
                *ASR,
                "transcribe",
                str(corpus / "dia" / "conv0.flac"),
                "--diarize",
                "--format",
                "srt,json",
                "-o",
                str(out),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "ASR_LOCAL_MESH_OWNER_PID": str(os.getpid())},
        )
    finally:  # what `make run` does leaves the mesh running for the next call: stop it here
        stop = subprocess.run(
            [*ASR, "serve", "--stop", "--state-dir", str(tmp_path / "state")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
    assert stop.returncode == 0 and "stopped the local mesh" in stop.stderr, stop.stderr
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    cues = list(srt.parse((out / "conv0.srt").read_text(encoding="utf-8")))
    assert len(cues) >= 4
    data = json.loads((out / "conv0.json").read_text(encoding="utf-8"))
    assert len(data["speakers"]) == 2
    assert data["trace_id"] and (tmp_path / "state" / "traces").is_dir()
    assert "conv0.srt" in proc.stderr  # tells the user where the outputs are


def test_serve_runs_until_sigterm_and_leaves_nothing_running(corpus, tmp_path):
    serve = subprocess.Popen(
        [*ASR, "serve", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    try:
        line = serve.stdout.readline()
        assert line.startswith("gateway listening on "), line + serve.stderr.read()
        address = line.split()[-1]
        proc = subprocess.run(
            [
                *ASR,
                "transcribe",
                str(corpus / "asr" / "001.flac"),
                "-o",
                str(tmp_path / "out"),
                "--server",
                address,
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out" / "001.json").is_file()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
    host, port = address.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2)
    logs = tmp_path / "state" / "logs"
    assert sorted(p.stem for p in logs.iterdir()) == [
        "diarization",
        "gateway",
        "merge",
        "prefork",  # the template the services are forked from (asr_mesh.services.prefork)
        "preprocess",
        "transcription",
    ]
    leftovers = [
        pid for pid in os.listdir("/proc") if pid.isdigit() and _mentions(pid, str(tmp_path))
    ]
    assert leftovers == []


def _mentions(pid: str, text: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return text.encode() in environ
