"""Retries for calls between services: tenacity, UNAVAILABLE only, at most 3 attempts in total.

Only UNAVAILABLE is retried because it is the one status gRPC guarantees means "the request
did not reach a handler that could have acted on it"; anything else (bad input, deadline,
overload) is passed on to the caller at once.
"""

from __future__ import annotations

import logging

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


def retrying(max_attempts: int = MAX_ATTEMPTS, initial_wait_s: float = 0.2) -> Retrying:
    """A tenacity policy; use as `for attempt in retrying(): with attempt: ...`."""
    return Retrying(
        retry=retry_if_exception(is_unavailable),
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential_jitter(multiplier=initial_wait_s, max=2.0),
        before_sleep=_record_retry,
        reraise=True,
    )
