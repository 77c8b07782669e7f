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

A caller can also stop sending without ending or cancelling its stream. Without a deadline it
would hold the server thread, and in the transcription and diarization services a worker slot,
forever. `StallGuardInterceptor` (asr_mesh/services/common/server.py) reads every request stream of
the mesh's own services through `stall_guarded`, which refuses a stream once no message has arrived
for the configured idle time (`UploadStalled`, DEADLINE_EXCEEDED with the setting's name in the
sentence).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

from asr_mesh.services.common.domain_errors import Cancelled, InvalidInput, UploadStalled

T = TypeVar("T")

CANCEL_NOTICE_GRACE_S = 2.0
"""How long a short upload waits for a cancel notice that may already be on its way. It usually
lands within milliseconds, and the wait ends the moment it does; only a client that half-closed
early (a bug) waits the whole time before it is told."""


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
                f"{self._field}",
                field=self._field,
            )

    def finish(self, grace_s: float = CANCEL_NOTICE_GRACE_S) -> int:
        """Call when the request stream ends; returns the byte count of a complete upload.

        `grace_s`: how long to wait for a cancel notice on a short upload (event-loop servers
        pass 0 after waiting without blocking: their cancel notice cancels the handler's task).
        """
        if self._ended.is_set():
            raise Cancelled(f"the caller cancelled the request during the {self._what}")
        if self.declared and self.received != self.declared:
            if grace_s > 0 and self._ended.wait(grace_s):
                raise Cancelled(f"the caller cancelled the request during the {self._what}")
            raise InvalidInput(
                f"the {self._what} ended after {self.received} of the {self.declared} bytes "
                f"declared in {self._field}",
                field=self._field,
            )
        return self.received


_MESSAGE, _END, _FAILED = object(), object(), object()


def stall_guarded(messages: Iterator[T], idle_timeout_s: float, *, setting: str) -> Iterator[T]:
    """`messages`, read on a helper thread; `UploadStalled` once none arrives for `idle_timeout_s`.

    The helper reads one message each time the handler asks for one, never ahead: a handler
    waiting in the admission queue holds no audio. Only time the handler spends waiting for a
    message counts. The end of the stream and errors (a cancelled call's `RpcError`) are passed
    through as they are. 0 disables the guard.
    """
    if idle_timeout_s <= 0:
        yield from messages
        return
    pipe: queue.Queue[tuple[object, Any]] = queue.Queue(maxsize=1)
    wanted = threading.Semaphore(0)
    stop = threading.Event()

    def offer(kind: object, value: Any = None) -> bool:
        while not stop.is_set():  # the handler may have given up: never block forever on a put
            try:
                pipe.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            while True:
                wanted.acquire()  # the handler asked for the next message (or gave up)
                if stop.is_set():
                    return
                try:
                    message = next(messages)
                except StopIteration:
                    offer(_END)
                    return
                if not offer(_MESSAGE, message):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the handler's thread, raised there
            offer(_FAILED, exc)

    threading.Thread(target=pump, name="request-stream-reader", daemon=True).start()
    try:
        while True:
            wanted.release()
            try:
                kind, value = pipe.get(timeout=idle_timeout_s)
            except queue.Empty:
                raise UploadStalled(
                    f"the request stream stalled: no message arrived for {idle_timeout_s:g} s "
                    f"({setting}); send the whole upload without pausing, or close the stream",
                    metadata={"idle_timeout_seconds": f"{idle_timeout_s:g}"},
                ) from None
            if kind is _END:
                return
            if kind is _FAILED:
                raise value
            yield value
    finally:
        stop.set()
        wanted.release()  # wake a reader waiting to be asked, so it can see `stop` and leave
