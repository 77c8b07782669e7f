"""Fixtures of the security tests (imported by name: the folder has no conftest, like tests/deploy)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from fakes import FakeStages  # noqa: E402 - the gateway tests' fake downstream stages

__all__ = ["FakeStages", "other_ca", "tls", "token_file"]

TOKENS = "# callers of the test gateway\nalice-secret-token alice\n\nbob-secret-token  # no label\n"


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    """CA and mesh certificate as `asr serve --tls` makes them."""
    from asr_mesh.services.common.local_ca import ensure_local_tls

    return ensure_local_tls(tmp_path_factory.mktemp("state") / "tls")


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory):
    """A second, unrelated CA: its certificates must be refused by the first one's servers."""
    from asr_mesh.services.common.local_ca import ensure_local_tls

    return ensure_local_tls(tmp_path_factory.mktemp("other") / "tls")


@pytest.fixture()
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    return path
