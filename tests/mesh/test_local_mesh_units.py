"""Fast checks of the local mesh's pieces: backend availability in the gateway, port reservation, replicas."""

from __future__ import annotations

import json
import socket
from concurrent import futures

import grpc
import pytest
from conftest import channel_to

from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr_mesh.services.common.errors import MeshError
from asr_mesh.services.gateway.availability import Backends
from asr_mesh.services.gateway.server import GatewaySettings, create_server
from asr_mesh.services.supervisor import (
    LocalMesh,
    MeshInfo,
    read_mesh_file,
    reserve_port,
    transcription_replica_count,
    write_json_atomic,
)


def test_a_backend_is_present_when_addressed_and_listed(tmp_path):
    mesh_file = tmp_path / "mesh.json"
    assert not Backends({"diarization": ""}).present("diarization")
    assert Backends({"diarization": "127.0.0.1:1"}).present("diarization")
    backends = Backends({"diarization": "127.0.0.1:1"}, mesh_file)
    assert backends.present("diarization")  # no file yet: nothing known, so the call is tried
    write_json_atomic(mesh_file, {"gateway": [{"pid": 1}], "transcription": [{"pid": 2}]})
    assert not backends.present("diarization")
    write_json_atomic(mesh_file, {"gateway": [{"pid": 1}], "diarization": [{"pid": 3}]})
    assert backends.present("diarization")
    # Several transcription replicas: listed, so present; their comma-separated address counts as set.
    replicas = Backends({"transcription": "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"}, mesh_file)
    write_json_atomic(
        mesh_file,
        {
            "transcription": [
                {"pid": 4, "replica": 0},
                {"pid": 5, "replica": 1},
                {"pid": 6, "replica": 2},
            ]
        },
    )
    assert replicas.present("transcription")


@pytest.fixture()
def gateway_without_diarization(tmp_path):
    mesh_file = tmp_path / "mesh.json"
    mesh_file.write_text(json.dumps({"gateway": [{"pid": 1, "address": ""}]}))

    def no_stages():
        raise AssertionError("a refused request must not reach the chain")

    handle = create_server(
        GatewaySettings(port=0, spool_dir=tmp_path, mesh_file=mesh_file), stages_factory=no_stages
    )
    yield pb_grpc.GatewayServiceStub(channel_to(handle.port))
    handle.stop(0)


@pytest.mark.parametrize(
    "config",
    [
        {"diarize": True},
        {"diarize": True, "num_speakers": 2},
        {"diarize": True, "speaker_names": {"SPEAKER_00": "Ana"}},
        {"diarize": True, "min_speakers": 1, "max_speakers": 3},
    ],
)
def test_the_gateway_refuses_speaker_options_without_diarization(
    gateway_without_diarization, config
):
    def requests():
        yield pb.TranscribeRequest(
            config=pb.TranscribeConfig(filename="a.wav", upload_size_bytes=4, **config)
        )
        yield pb.TranscribeRequest(content=b"RIFF")

    with pytest.raises(grpc.RpcError) as err:
        list(gateway_without_diarization.Transcribe(requests(), timeout=10))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = err.value.details()
    assert message.startswith("this mesh runs no diarization service, so it cannot label speakers")
    assert all(name in message for name in config)


def test_a_reserved_port_is_refused_to_others_and_taken_by_a_service():
    holder = reserve_port()
    port = holder.getsockname()[1]
    try:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        server = grpc.server(futures.ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
        assert server.add_insecure_port(f"127.0.0.1:{port}") == port
        server.start()
        server.stop(0).wait()
        again = grpc.server(futures.ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
        assert (
            again.add_insecure_port(f"127.0.0.1:{port}") == port
        )  # the restart gets the same port
        again.stop(0)
    finally:
        holder.close()


def test_mesh_file_round_trip_and_a_dead_supervisor(tmp_path):
    path = tmp_path / "mesh.json"
    write_json_atomic(
        path,
        {
            "supervisor": [{"pid": 999999999, "start_ticks": 1, "kind": "serve"}],
            "gateway": [{"pid": 5, "address": "127.0.0.1:9", "state": "ready"}],
        },
    )
    info = MeshInfo(read_mesh_file(path))
    assert info.gateway_address == "127.0.0.1:9" and info.state("gateway") == "ready"
    assert not info.supervisor_alive() and not info.killable_supervisor
    path.write_text("{not json")
    assert read_mesh_file(path) is None


def test_several_replicas_in_the_mesh_file(tmp_path):
    path = tmp_path / "mesh.json"
    entries = [
        {"pid": 10 + i, "address": f"127.0.0.1:{20 + i}", "state": "ready", "replica": i}
        for i in range(3)
    ]
    write_json_atomic(
        path,
        {
            "gateway": [{"pid": 5, "address": "127.0.0.1:9", "state": "ready"}],
            "transcription": entries,
        },
    )
    info = MeshInfo(read_mesh_file(path))
    assert info.replicas("transcription") == 3 and info.replicas("diarization") == 0
    assert info.state("transcription") == "ready"
    assert sorted(info.pids()) == [
        ("gateway", 5),
        ("transcription", 10),
        ("transcription", 11),
        ("transcription", 12),
    ]
    entries[2]["state"] = "restarting"  # one replica down: the service is not ready
    info = MeshInfo({"transcription": entries})
    assert info.state("transcription") == "restarting"


def test_the_replica_count(monkeypatch):
    monkeypatch.delenv("ASR_LOCAL_TRANSCRIPTION_REPLICAS", raising=False)
    assert transcription_replica_count() == 1
    assert transcription_replica_count("3") == 3
    monkeypatch.setenv("ASR_LOCAL_TRANSCRIPTION_REPLICAS", "4")
    assert transcription_replica_count() == 4 and transcription_replica_count(2) == 2
    for bad in ("0", "-1", "x", "65"):
        monkeypatch.setenv("ASR_LOCAL_TRANSCRIPTION_REPLICAS", bad)
        with pytest.raises(MeshError, match="ASR_LOCAL_TRANSCRIPTION_REPLICAS"):
            transcription_replica_count()
        with pytest.raises(MeshError, match="--transcription-replicas"):
            transcription_replica_count(bad)


def test_replicas_share_the_cores_and_get_their_own_metrics_port(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    mesh = LocalMesh(state_dir=tmp_path, transcription_replicas=3)  # nothing starts before start()
    assert mesh.replicas["transcription"] == 3 and mesh.replicas["gateway"] == 1
    assert mesh._replica_env("transcription", 0, {}) == {"ASR_TRANSCRIPTION_CPU_THREADS": "2"}
    chosen = {"ASR_TRANSCRIPTION_CPU_THREADS": "4", "ASR_TRANSCRIPTION_METRICS_PORT": "9100"}
    assert mesh._replica_env("transcription", 2, chosen) == {
        "ASR_TRANSCRIPTION_METRICS_PORT": "9102"
    }
    assert mesh._replica_env("transcription", 1, {"ASR_TRANSCRIPTION_METRICS_PORT": "0"}) == {
        "ASR_TRANSCRIPTION_CPU_THREADS": "2"
    }


def test_the_supervisor_process_loads_no_grpc():
    """It only starts, watches and restarts processes: gRPC, numpy and pydantic are the
    services' (and the prefork template's), not a cost the supervisor pays in memory."""
    import subprocess
    import sys

    program = (
        "import sys, asr_mesh.services.supervisor\n"
        "heavy = [m for m in ('grpc', 'numpy', 'pydantic', 'opentelemetry.sdk') if m in sys.modules]\n"
        "sys.exit(f'asr_mesh.services.supervisor imports {heavy}' if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
