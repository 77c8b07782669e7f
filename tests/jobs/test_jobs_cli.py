"""`asr submit` and `asr jobs …` against a real in-process gateway (embedded store)."""

from __future__ import annotations

import threading
import time

import pytest
from jobs_helpers import ScriptedStages, free_port

from asr_mesh.client.cli import main
from asr_mesh.services.gateway.server import GatewaySettings, create_server

pytestmark = pytest.mark.grpc
IDENTITY = ("scripted", "ab" * 32)


def start(state_dir, stages, port: int = 0, **overrides):
    settings = GatewaySettings(port=port, job_poll_s=0.05, job_lease_s=1.0, **overrides)
    return create_server(settings, stages_factory=stages, model_identity=lambda name: IDENTITY)


@pytest.fixture()
def gateway(state_dir):
    handle = start(state_dir, ScriptedStages())
    yield handle
    handle.stop(0)


def submitted(capsys) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in capsys.readouterr().out.splitlines()]


def test_submit_prints_one_job_per_file_and_get_writes_the_documents(gateway, tmp_path, capsys):
    (tmp_path / "um.wav").write_text("primeiro arquivo")
    (tmp_path / "dois.wav").write_text("segundo arquivo")
    code = main(
        [
            "submit",
            str(tmp_path / "um.wav"),
            str(tmp_path / "nada.wav"),
            str(tmp_path / "dois.wav"),
            "--format",
            "json,srt",
            "--server",
            gateway.address,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1 and "nada.wav: no such file" in err  # one bad input does not stop the others
    jobs = [tuple(line.split("\t")) for line in out.splitlines()]
    assert [f for _, f in jobs] == [str(tmp_path / "um.wav"), str(tmp_path / "dois.wav")]

    out_dir = tmp_path / "out"
    for job_id, _ in jobs:
        assert (
            main(
                [
                    "jobs",
                    "get",
                    job_id,
                    "--wait",
                    "--timeout",
                    "20",
                    "--quiet",
                    "-o",
                    str(out_dir),
                    "--format",
                    "srt",
                    "--server",
                    gateway.address,
                ]
            )
            == 0
        )
    assert (out_dir / "um.srt").read_text() == "srt: primeiro arquivo"
    assert (out_dir / "dois.srt").read_text() == "srt: segundo arquivo"
    assert not (out_dir / "um.json").exists()

    capsys.readouterr()
    assert main(["jobs", "list", "--server", gateway.address]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in listed] == [jobs[1][0], jobs[0][0]]
    assert all("succeeded" in line for line in listed)

    assert main(["jobs", "get", jobs[0][0], "--format", "vtt", "--server", gateway.address]) == 1
    assert "no vtt document" in capsys.readouterr().err
    assert main(["jobs", "delete", jobs[0][0], "--server", gateway.address]) == 0
    capsys.readouterr()
    assert main(["jobs", "get", jobs[0][0], "--server", gateway.address]) == 1
    err = capsys.readouterr().err
    assert err.startswith("asr: no job") and len(err.strip().splitlines()) == 1


def test_cancel_and_watch(state_dir, tmp_path, capsys):
    stages = ScriptedStages(work_s=60)
    handle = start(state_dir, stages)
    try:
        (tmp_path / "longo.wav").write_text("nunca termina")
        assert main(["submit", str(tmp_path / "longo.wav"), "--server", handle.address]) == 0
        [(job_id, _)] = submitted(capsys)
        assert stages.started.wait(10)
        assert main(["jobs", "cancel", job_id, "--server", handle.address]) == 0
        assert capsys.readouterr().out.startswith(f"{job_id}\tcancelled")
        assert main(["jobs", "watch", job_id, "--quiet", "--server", handle.address]) == 1
        assert "cancelled" in capsys.readouterr().out
    finally:
        handle.stop(0)


def test_get_wait_rides_out_a_gateway_restart(state_dir, tmp_path, capsys):
    port = free_port()
    first = start(state_dir, ScriptedStages(), port=port, job_workers=0)  # accepts, runs nothing
    (tmp_path / "a.wav").write_text("depois do reinício")
    assert main(["submit", str(tmp_path / "a.wav"), "--server", first.address]) == 0
    [(job_id, _)] = submitted(capsys)
    codes = []
    waiter = threading.Thread(
        target=lambda: codes.append(
            main(
                [
                    "jobs",
                    "get",
                    job_id,
                    "--wait",
                    "--quiet",
                    "--timeout",
                    "60",
                    "-o",
                    str(tmp_path / "out"),
                    "--server",
                    first.address,
                ]
            )
        )
    )
    waiter.start()
    time.sleep(0.5)
    first.stop(0)  # the gateway goes away while the CLI waits
    time.sleep(1.0)
    second = start(state_dir, ScriptedStages(), port=port)
    try:
        waiter.join(60)
        assert codes == [0]
        assert (tmp_path / "out" / "a.json").read_text() == "json: depois do reinício"
    finally:
        second.stop(0)


def test_submit_without_a_gateway_says_so(tmp_path, state_dir, capsys, monkeypatch):
    monkeypatch.delenv("ASR_SERVER", raising=False)
    (tmp_path / "a.wav").write_text("x")
    assert main(["submit", str(tmp_path / "a.wav")]) == 1
    assert "--server" in capsys.readouterr().err
    assert (
        main(
            [
                "submit",
                str(tmp_path / "a.wav"),
                "--server",
                f"127.0.0.1:{free_port()}",
                "--connect-timeout",
                "1",
            ]
        )
        == 1
    )
    assert "cannot reach the gateway" in capsys.readouterr().err
