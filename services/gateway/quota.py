"""One disk quota for everything the gateway spools: uploads in flight, their decoded PCM and
the job spool, together.

Without it eight uploads of no declared size fill the gateway's scratch volume before the
per-upload limit refuses any of them. Usage is measured on disk (the `asr-gateway-*` request
directories in the spool directory, and the whole job spool, so files of other replicas on a
shared volume count too), at most every `rescan_s`, plus what this process's uploads wrote
since and the bytes still promised by uploads that declared their size:

- an upload that declares a size that does not fit what is left: RESOURCE_EXHAUSTED with
  RetryInfo before a byte is read (a size larger than the whole quota can never fit: that is
  INVALID_ARGUMENT, LIMIT_EXCEEDED);
- an upload with no declared size is cut, RESOURCE_EXHAUSTED with RetryInfo, as soon as it
  passes what is left.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.common.errors import LimitExceeded, Overloaded

SETTING = "ASR_GATEWAY_SPOOL_QUOTA_BYTES"


def _tree_bytes(path: Path) -> int:
    total = 0
    try:
        if not path.is_dir():
            return path.stat().st_size
        for folder, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except OSError:  # removed while we looked
                    pass
    except OSError:
        pass
    return total


class Claim:
    """One upload's share of the quota while it is received."""

    def __init__(self, quota: SpoolQuota, declared: int):
        self._quota = quota
        self.declared = declared
        self.received = 0

    @property
    def outstanding(self) -> int:
        return max(self.declared - self.received, 0)

    def add(self, num_bytes: int) -> None:
        self._quota._add(self, num_bytes)


class SpoolQuota:
    """`limit_bytes` across the `roots`: (directory, glob) pairs whose matches are measured."""

    def __init__(self, limit_bytes: int, roots: list[tuple[Path, str]], *, rescan_s: float = 1.0,
                 retry_after_s: float = 10.0):
        self.limit = limit_bytes
        self._roots = [(Path(d), pattern) for d, pattern in roots]
        self._rescan_s = rescan_s
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._claims: set[Claim] = set()
        self._measured = 0
        self._written = 0  # by this process's uploads since the last measurement
        self._measured_at = float("-inf")

    def measure(self) -> int:
        """Bytes on disk under the roots now."""
        total = 0
        for directory, pattern in self._roots:
            if directory.is_dir():
                total += sum(_tree_bytes(p) for p in directory.glob(pattern))
        return total

    def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._measured_at < self._rescan_s:
            return
        measured = self.measure()
        with self._lock:
            self._measured, self._written, self._measured_at = measured, 0, time.monotonic()

    def usage(self) -> int:
        """Bytes counted against the quota: on disk, plus what declared uploads still bring."""
        with self._lock:
            return self._measured + self._written + sum(c.outstanding for c in self._claims)

    def _full(self, lead: str) -> Overloaded:
        left = max(self.limit - self.usage(), 0)
        return Overloaded(
            f"{lead}; {left} bytes of the gateway's {self.limit}-byte spool quota ({SETTING}) are "
            "free: retry once running work has finished",
            retry_after_s=self._retry_after_s,
            metadata={"quota_bytes": str(self.limit), "free_bytes": str(left)},
        )

    @contextmanager
    def upload(self, declared: int) -> Iterator[Claim]:
        """Admit an upload (declared size, or 0 for unknown); `Claim.add` each piece received."""
        if declared > self.limit:
            raise LimitExceeded(
                f"the upload's declared size of {declared} bytes is larger than the gateway's whole "
                f"spool quota of {self.limit} bytes ({SETTING})",
                field="config.upload_size_bytes", metadata={"quota_bytes": str(self.limit)})
        self._refresh()
        claim = Claim(self, declared)
        with self._lock:
            used = self._measured + self._written + sum(c.outstanding for c in self._claims)
            if used + max(declared, 1) > self.limit:
                full = True
            else:
                full = False
                self._claims.add(claim)
        if full:
            raise self._full(f"the gateway's spool has no room for this upload's {declared} bytes"
                             if declared else "the gateway's spool is full")
        try:
            yield claim
        finally:
            with self._lock:
                self._claims.discard(claim)

    def _add(self, claim: Claim, num_bytes: int) -> None:
        if not claim.declared:
            self._refresh()
        with self._lock:
            claim.received += num_bytes
            self._written += num_bytes
            if claim.declared:
                return  # its bytes were admitted up front
            used = self._measured + self._written + sum(c.outstanding for c in self._claims)
            over = used > self.limit
        if over:
            raise self._full(f"the upload (of undeclared size) was cut after {claim.received} bytes: "
                             "the gateway's spool is full")


def unlimited() -> SpoolQuota:
    """A quota that never refuses (tests and callers that spool nothing)."""
    return SpoolQuota(1 << 62, [])
