"""Telling a finished upload from an abandoned one.

gRPC's Python server ends a request iterator the same way whether the client half-closed (it
sent everything) or cancelled: the pending read completes empty and the iterator stops, while
the cancel notice arrives on a separate completion that may be handled a moment later. A
servicer that trusted the end of the iterator would decode, transcribe or diarize a cut-off
upload as if it were a short file, for a caller that is no longer there.

So every client-streaming handler counts what it receives with an `UploadMeter` and calls
`finish()` when the iterator ends:

- the RPC is already over (`ended` set): `Cancelled` (the error map turns it into CANCELLED,
  or DEADLINE_EXCEEDED when the deadline is what ended it);
- the caller declared a size and a different number of bytes arrived: a cancel notice still
  in flight is waited for briefly, then `InvalidInput` names both numbers;
- more bytes than declared: refused as soon as they arrive, not at the end.

A caller that declares no size is trusted on the end of its stream, as gRPC itself does.
"""

from __future__ import annotations

import threading

from services.common.errors import Cancelled, InvalidInput

CANCEL_NOTICE_GRACE_S = 0.5
"""How long a short upload waits for a cancel notice that may already be on its way: on
loopback or a LAN it lands within milliseconds, and a client that half-closed early (a bug)
loses nothing but this moment before it is told."""


class UploadMeter:
    """Counts an upload's bytes against the size its caller declared (0 = not declared)."""

    def __init__(self, declared: int, ended: threading.Event, *, what: str, field: str):
        if declared < 0:
            raise InvalidInput(f"{field} must not be negative, got {declared}", field=field)
        self.declared = declared
        self.received = 0
        self._ended = ended
        self._what = what
        self._field = field

    def add(self, num_bytes: int) -> None:
        """Count a piece; refuse at once when the upload outgrows its declared size."""
        self.received += num_bytes
        if self.declared and self.received > self.declared:
            raise InvalidInput(
                f"the {self._what} is longer than the {self.declared} bytes declared in "
                f"{self._field}", field=self._field)

    def finish(self) -> int:
        """Call when the request stream ends; returns the byte count of a complete upload."""
        if self._ended.is_set():
            raise Cancelled(f"the caller cancelled the request during the {self._what}")
        if self.declared and self.received != self.declared:
            if self._ended.wait(CANCEL_NOTICE_GRACE_S):
                raise Cancelled(f"the caller cancelled the request during the {self._what}")
            raise InvalidInput(
                f"the {self._what} ended after {self.received} of the {self.declared} bytes "
                f"declared in {self._field}", field=self._field)
        return self.received
