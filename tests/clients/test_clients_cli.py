"""The CLI's promises that need no mesh: one readable line per failure, exit codes, never a hang."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asr_mesh.client import cli

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asr_mesh.client.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket closes


def test_unreachable_server_fails_fast_with_one_line(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    port = closed_port()
    proc = run_cli(
        "transcribe",
        str(audio),
        "--server",
        f"127.0.0.1:{port}",
        "--connect-timeout",
        "1",
        "-o",
        str(tmp_path / "out"),
        "--quiet",
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"asr: cannot reach the gateway at 127.0.0.1:{port} (no connection within 1 s); 1 file not transcribed"
    ]
    assert not (tmp_path / "out" / "a.json").exists()


def test_missing_inputs_and_name_collisions_are_reported_per_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "talk.wav", tmp_path / "b" / "talk.mp3"
    first.write_bytes(b"x")
    second.write_bytes(b"x")
    odd = tmp_path / "Reunião [final].wav"  # rich markup must not eat "[final]"
    proc = run_cli(
        "transcribe",
        str(first),
        str(second),
        str(odd),
        str(tmp_path),
        "--server",
        f"127.0.0.1:{closed_port()}",
        "--connect-timeout",
        "1",
        "--quiet",
        timeout=30,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        f"asr: {second}: its outputs would overwrite those of {first} (same name); rename one"
        in lines
    )
    assert f"asr: {odd}: no such file" in lines
    assert f"asr: {tmp_path}: not a regular file" in lines
    assert any(
        line.startswith("asr: cannot reach the gateway") and line.endswith("1 file not transcribed")
        for line in lines
    )
    assert len(lines) == 4


def test_usage_errors_exit_2_without_traceback():
    proc = run_cli("transcribe", "x.wav", "--format", "docx")
    assert (
        proc.returncode == 2
        and "unknown format 'docx'" in proc.stderr
        and "Traceback" not in proc.stderr
    )


@pytest.mark.parametrize(
    ("extra", "diarize"),
    [
        ([], False),
        (["--num-speakers", "2"], True),
        (["--speaker-name", "SPEAKER_00=Ana"], True),
        (["--format", "json,rttm"], True),
        (["--diarize"], True),
    ],
)
def test_asking_for_speakers_implies_diarization(monkeypatch, tmp_path, extra, diarize):
    seen = {}

    class FakeClient:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    def fake_transcribe_one(client, path, options, quiet):
        seen["diarize"] = options.diarize
        raise cli.MeshError("stop here")

    monkeypatch.setattr(cli, "GatewayClient", FakeClient)
    monkeypatch.setattr(cli, "_transcribe_one", fake_transcribe_one)
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    assert cli.main(["transcribe", str(audio), "--server", "x:1", "-o", str(tmp_path), *extra]) == 1
    assert seen["diarize"] is diarize


def test_an_unreachable_gateway_stops_the_batch_with_one_line(tmp_path):
    files = []
    for name in ("a", "b", "c"):
        files.append(tmp_path / f"{name}.wav")
        files[-1].write_bytes(b"RIFF")
    proc = run_cli(
        "transcribe",
        *map(str, files),
        "--server",
        f"127.0.0.1:{closed_port()}",
        "--connect-timeout",
        "1",
        "--quiet",
        timeout=30,
    )
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()  # not one line (and one timeout) per file
    assert line.endswith("; 3 files not transcribed")


def test_a_transcription_can_be_copied_and_pickled():
    import copy
    import pickle

    from asr.gateway.v1 import gateway_service_pb2 as pb
    from asr_mesh.client.sdk import Transcription

    original = Transcription(pb.TranscribeResult(trace_id="ab", speakers=["SPEAKER_00"]))
    assert copy.copy(original).trace_id == "ab"
    assert pickle.loads(pickle.dumps(original)).speakers == ["SPEAKER_00"]
