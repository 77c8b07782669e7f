"""The `asr` command with the client distribution alone: commands that run a local mesh say in
one line that the server is not installed; the others do not need it.

Here the server is hidden from a child process (`asr_mesh.services` set to None in sys.modules,
which is what a venv without it looks like to an import); tests/clients/test_client_dist.py checks
the same in a real venv with only `pip install ./clients`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

WITHOUT_SERVER = (
    "import sys\n"
    "sys.modules['asr_mesh.services'] = None  # as if the server distribution were not installed\n"
    "from asr_mesh.client.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def asr_without_server(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "what", "suggests_server_flag"),
    [
        (("transcribe", "x.wav"), "`asr transcribe` without --server", True),
        (("stream", "x.wav"), "`asr stream` without --server", True),
        (("serve",), "`asr serve`", False),
        (("serve", "--transcription-replicas", "2"), "`asr serve`", False),
    ],
)
def test_local_mesh_commands_say_the_server_is_missing_in_one_line(
    tmp_path, monkeypatch, args, what, suggests_server_flag
):
    monkeypatch.setenv("ASR_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    proc = asr_without_server(*args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(
        f"asr: {what} runs a local mesh, which needs the server package "
        "(asr-mesh), and it is not installed"
    )
    assert ("--server HOST:PORT" in lines[0]) is suggests_server_flag
    assert "pip install" in lines[0]


def test_commands_that_call_a_gateway_do_not_need_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("ASR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("ASR_SERVER", raising=False)
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    # A closed port: the client gets as far as calling, and says the gateway is unreachable.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = asr_without_server(
        "transcribe",
        "x.wav",
        "--server",
        f"127.0.0.1:{port}",
        "--connect-timeout",
        "1",
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"asr: cannot reach the gateway at 127.0.0.1:{port} (no connection within 1 s); "
        "1 file not transcribed"
    ]
    jobs = asr_without_server("jobs", "list", cwd=tmp_path)
    assert jobs.returncode == 1 and jobs.stderr.strip().splitlines() == [
        "asr: no gateway to send jobs to: pass --server HOST:PORT (or set ASR_SERVER, or start "
        "one with `asr serve`)"
    ]
    trace = asr_without_server(
        "trace", "list", "--state-dir", str(tmp_path / "state"), cwd=tmp_path
    )
    assert trace.returncode == 1
    assert trace.stderr.strip() == f"asr: no traces in {tmp_path / 'state' / 'traces'}"


def test_a_broken_server_install_is_not_reported_as_missing(tmp_path, monkeypatch):
    """Only a missing `asr_mesh.services` package gets the sentence: a server whose own dependency
    is missing reports that dependency, so the real problem is not hidden."""
    monkeypatch.setenv("ASR_STATE_DIR", str(tmp_path / "state"))
    fake = tmp_path / "asr_mesh" / "services"  # first on sys.path for `python -c` run in tmp_path
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "supervisor.py").write_text("import no_such_server_dependency\n")
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    proc = subprocess.run(
        [sys.executable, "-m", "asr_mesh.client.cli", "transcribe", "x.wav"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "asr: unexpected error: ModuleNotFoundError: No module named 'no_such_server_dependency'"
    ]


def test_trace_show_works_and_png_without_matplotlib_is_one_line(tmp_path):
    """`asr trace` reads the state directory's trace files with the client alone; `--png` needs
    matplotlib, which the client does not depend on, and says so in one line."""
    import json

    traces = tmp_path / "state" / "traces"
    traces.mkdir(parents=True)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    spans = [
        {
            "service": "gateway",
            "name": "Transcribe",
            "trace_id": trace_id,
            "span_id": "a" * 16,
            "parent_span_id": "",
            "start_ns": 1_000_000_000,
            "end_ns": 3_000_000_000,
        },
        {
            "service": "merge",
            "name": "Merge",
            "trace_id": trace_id,
            "span_id": "b" * 16,
            "parent_span_id": "a" * 16,
            "start_ns": 2_000_000_000,
            "end_ns": 2_500_000_000,
        },
    ]
    (traces / "gateway-1.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans))
    program = (
        "import sys\n"
        "sys.modules['asr_mesh.services'] = None\n"
        "sys.modules['matplotlib'] = None  # not installed\n"
        "from asr_mesh.client.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [
        "trace",
        "show",
        trace_id[:8],
        "--state-dir",
        str(tmp_path / "state"),
        "--format",
        "json",
    ]
    shown = subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert [s["name"] for s in json.loads(shown.stdout)] == ["Transcribe", "Merge"]
    png = subprocess.run(
        [sys.executable, "-c", program, *args, "--png", str(tmp_path / "w.png")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert png.returncode == 1 and not (tmp_path / "w.png").exists()
    assert png.stderr.strip().splitlines() == [
        "asr: --png needs matplotlib, which is not installed (pip install "
        "'asr-mesh-client[png]' or pip install matplotlib)"
    ]
