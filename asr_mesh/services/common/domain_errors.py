"""The mesh's domain errors (no gRPC): the client distribution's `asr_mesh.client.errors`.

The classes live in the client package because a caller gets them back from a failed call
(`from_rpc_error`) and must not need the server installed for that; the server's cores raise the
very same classes. This module keeps the server's import path: `from
asr_mesh.services.common.domain_errors import InvalidInput` is
`asr_mesh.client.errors.InvalidInput`.
"""

from __future__ import annotations

from asr_mesh.client import errors as _errors
from asr_mesh.client.errors import *  # noqa: F403 - exactly the client's public names

__all__ = list(_errors.__all__)
