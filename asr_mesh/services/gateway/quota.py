"""One disk quota for everything the gateway spools: uploads in flight, their decoded PCM and
the job spool, together.

Without it eight uploads of no declared size fill the gateway's scratch volume before the
per-upload limit refuses any of them. Usage is measured on disk (the `asr-gateway-*` request
directories in the spool directory, and the whole job spool, so files of other replicas on a
shared volume count too) when an upload starts and, while one of undeclared size is received,
at most every `rescan_s`; plus what this process's uploads wrote since and the bytes still
promised by uploads that declared their size:

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

from asr_mesh.services.common.domain_errors import LimitExceeded, Overloaded

SETTING = "ASR_GATEWAY_SPOOL_QUOTA_BYTES"


def _tree_bytes(path: Path, skip: set[str]) -> int:
    total = 0
    try:
        if not path.is_dir():
            return 0 if str(path) in skip else path.stat().st_size
        for folder, _dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(folder, name)
                if full in skip:
                    continue
                try:
                    total += os.stat(full).st_size
                except OSError:  # removed while we looked
                    pass
    except OSError:
        pass
    return total


class Claim:
    """One upload's share of the quota while it is received: its declared size, or what has
    arrived when that is more (its file is counted by this, not by its size on disk)."""

    def __init__(self, quota: SpoolQuota, declared: int, path: Path | None):
        self._quota = quota
        self.declared = declared
        self.received = 0
        self.path = str(path) if path else ""

    @property
    def share(self) -> int:
        return max(self.declared, self.received)

    def add(self, num_bytes: int) -> None:
        self._quota._add(self, num_bytes)


class SpoolQuota:
    """`limit_bytes` across the `roots`: (directory, glob) pairs whose matches are measured."""

    def __init__(
        self,
        limit_bytes: int,
        roots: list[tuple[Path, str]],
        *,
        rescan_s: float = 1.0,
        retry_after_s: float = 10.0,
    ):
        self.limit = limit_bytes
        self._roots = [(Path(d), pattern) for d, pattern in roots]
        self._rescan_s = rescan_s
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._claims: set[Claim] = set()
        self._measured = 0
        self._measured_at = float("-inf")

    def measure(self, skip: set[str] | None = None) -> int:
        """Bytes on disk under the roots now (files in `skip` left out)."""
        total = 0
        for directory, pattern in self._roots:
            if directory.is_dir():
                total += sum(_tree_bytes(p, skip or set()) for p in directory.glob(pattern))
        return total

    def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._measured_at < self._rescan_s:
            return
        with self._lock:
            skip = {c.path for c in self._claims if c.path}
        measured = self.measure(skip)
        with self._lock:
            self._measured, self._measured_at = measured, time.monotonic()

    def _used(self) -> int:  # with the lock held
        return self._measured + sum(c.share for c in self._claims)

    def usage(self) -> int:
        """Bytes counted against the quota: on disk, plus the shares of uploads in flight."""
        with self._lock:
            return self._used()

    def _full(self, lead: str) -> Overloaded:
        left = max(self.limit - self.usage(), 0)
        return Overloaded(
            f"{lead}; {left} bytes of the gateway's {self.limit}-byte spool quota ({SETTING}) are "
            "free: retry once running work has finished",
            retry_after_s=self._retry_after_s,
            metadata={"quota_bytes": str(self.limit), "free_bytes": str(left)},
        )

    @contextmanager
    def upload(self, declared: int, path: Path | None = None) -> Iterator[Claim]:
        """Admit an upload into `path` (declared size, or 0 for unknown); `Claim.add` each piece."""
        if declared > self.limit:
            raise LimitExceeded(
                f"the upload's declared size of {declared} bytes is larger than the gateway's "
                f"whole spool quota of {self.limit} bytes ({SETTING})",
                field="config.upload_size_bytes",
                metadata={"quota_bytes": str(self.limit)},
            )
        claim = Claim(self, declared, path)
        with self._lock:
            self._claims.add(claim)  # before measuring: its file is not counted twice
        try:
            self._refresh(
                force=True
            )  # a fresh look per upload: finished requests free their room at once
            with self._lock:
                full = self._used() + (0 if declared else 1) > self.limit
            if full:
                raise self._full(
                    f"the gateway's spool has no room for this upload's {declared} bytes"
                    if declared
                    else "the gateway's spool is full"
                )
            yield claim
        finally:
            with self._lock:
                self._claims.discard(claim)

    def _add(self, claim: Claim, num_bytes: int) -> None:
        if not claim.declared:
            self._refresh()
        with self._lock:
            claim.received += num_bytes
            over = not claim.declared and self._used() > self.limit
        if over:  # declared uploads were admitted with their whole size up front
            raise self._full(
                f"the upload (of undeclared size) was cut after {claim.received} bytes: "
                "the gateway's spool is full"
            )


def unlimited() -> SpoolQuota:
    """A quota that never refuses (tests and callers that spool nothing)."""
    return SpoolQuota(1 << 62, [])
