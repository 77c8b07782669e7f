"""`asr serve --http-port`: argument checks and the supervisor's port reservation (no mesh)."""

from __future__ import annotations

import socket

import pytest

from asr_mesh.client import cli
from asr_mesh.services.supervisor import MeshStartError, reserve_port


def test_a_port_in_use_is_a_sentence_not_a_traceback():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(MeshStartError, match=f"cannot use port {busy.getsockname()[1]}"):
            reserve_port(port=busy.getsockname()[1])


def test_a_fixed_free_port_is_reserved_as_asked():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = reserve_port(port=port)
    try:
        assert sock.getsockname()[1] == port
    finally:
        sock.close()


def test_http_port_out_of_range_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["serve", "--state-dir", str(tmp_path), "--http-port", "70000"]) == 2
    assert "--http-port must be between 0 and 65535" in capsys.readouterr().err
