"""Retries for calls between services: tenacity, UNAVAILABLE only, at most 3 attempts in total.

Only UNAVAILABLE is retried: it is what a refused connection, a restarting pod or a dropped
connection look like; anything else (bad input, deadline, overload) goes to the caller at once.
UNAVAILABLE does not prove the request never reached a handler (an established stream whose
pod died ends the same way), so callers pass `retry_if` to retry a stream only when no
response had arrived yet: a request that kills a replica must not be replayed onto two more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from opentelemetry import trace
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


def _record_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("attempt %d failed with UNAVAILABLE, retrying: %s", state.attempt_number, exc)
    trace.get_current_span().add_event(
        "retry", {"asr.retry.attempt": state.attempt_number, "asr.retry.error": str(exc)[:200]}
    )


def retrying(
    max_attempts: int = MAX_ATTEMPTS,
    initial_wait_s: float = 0.2,
    retry_if: Callable[[], bool] = lambda: True,
) -> Retrying:
    """A tenacity policy; use as `for attempt in retrying(): with attempt: ...`.

    `retry_if` is asked after an UNAVAILABLE failure whether this call may be repeated.
    """
    return Retrying(
        retry=retry_if_exception(lambda exc: is_unavailable(exc) and retry_if()),
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential_jitter(multiplier=initial_wait_s, max=2.0),
        before_sleep=_record_retry,
        reraise=True,
    )
