"""A service whose process cannot be started is not left in the mesh's table (fast)."""

from __future__ import annotations

import pytest

from asr_mesh.services.supervisor import LocalMesh, reserve_port


def test_a_failed_start_on_demand_leaves_nothing_to_supervise(tmp_path):
    mesh = LocalMesh(state_dir=tmp_path, python=str(tmp_path / "no-such-python"))
    mesh._reserved["diarization"] = reserve_port()  # what start() reserves for every service
    try:
        with pytest.raises(OSError):
            mesh.ensure("diarization", wait=False)
        assert "diarization" not in mesh.services
        # The supervision loop goes on (it used to die on the entry without a process), and
        # the mesh table can be written.
        assert mesh.supervise_once() == []
        assert "diarization" not in mesh.describe()
    finally:
        mesh.stop(grace_s=0)
