"""The mesh's domain errors: what went wrong, in words a caller can act on. No gRPC here.

The server's cores raise these exceptions, and the client gets the same classes back from a
failed call. Each class carries a `category` (what kind of failure it is, in the domain's terms)
and a `reason` (the precise, machine-readable cause, sent to callers as google.rpc
ErrorInfo.reason); the message is a sentence shown to the caller. Which gRPC status a category
becomes is decided once: `asr_mesh.client.status.STATUS_OF`, used by the server's interceptors
(`asr_mesh.services.common.errors`) and by `from_rpc_error`, which turns a status back into these
classes. The server re-exports this module as `asr_mesh.services.common.domain_errors`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "BY_REASON",
    "GENERAL",
    "KNOWN",
    "Cancelled",
    "Category",
    "DeadlineExceeded",
    "DependencyFailed",
    "DependencyUnavailable",
    "Draining",
    "FailedPrecondition",
    "InternalError",
    "InvalidAudio",
    "InvalidInput",
    "LimitExceeded",
    "MeshError",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "Unauthenticated",
    "UnknownModel",
    "UploadStalled",
    "rebuild",
]


class Category(StrEnum):
    """The kind of failure, independent of any transport."""

    INVALID_INPUT = "invalid_input"
    """The request can never succeed as sent."""
    NOT_FOUND = "not_found"
    """It names something that does not exist (any more)."""
    FAILED_PRECONDITION = "failed_precondition"
    """Valid, but what it names is not in a state that allows it (yet)."""
    OVERLOADED = "overloaded"
    """At capacity: retry later."""
    UNAVAILABLE = "unavailable"
    """A dependency cannot be reached, or this replica is leaving: safe to retry."""
    DEADLINE = "deadline"
    """The work did not finish in time."""
    CANCELLED = "cancelled"
    """The caller went away."""
    UNAUTHENTICATED = "unauthenticated"
    """The caller did not say who it is."""
    PERMISSION_DENIED = "permission_denied"
    """The caller's credentials are not accepted."""
    INTERNAL = "internal"
    """Not the caller's fault, and not known to be safe to retry."""


class MeshError(Exception):
    """Base of every error a core may raise on purpose. The message is shown to the caller."""

    category: ClassVar[Category] = Category.INTERNAL
    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


class InvalidInput(MeshError):
    """The caller sent something that can never succeed as sent; `field` names the culprit."""

    category = Category.INVALID_INPUT
    reason = "INVALID_INPUT"

    def __init__(self, message: str, *, field: str = "", metadata: dict[str, str] | None = None):
        super().__init__(message, metadata=metadata)
        self.field = field


class InvalidAudio(InvalidInput):
    """The upload is not audio the mesh can decode (empty, corrupt, no audio stream...)."""

    reason = "INVALID_AUDIO"


class LimitExceeded(InvalidInput):
    """The input is larger or longer than a configured limit allows."""

    reason = "LIMIT_EXCEEDED"


class UnknownModel(InvalidInput):
    """The caller asked for a model the service does not have."""

    reason = "UNKNOWN_MODEL"


class Overloaded(MeshError):
    """The service is at capacity; the caller should retry after `retry_after_s`."""

    category = Category.OVERLOADED
    reason = "OVERLOADED"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class DependencyUnavailable(MeshError):
    """A service this one depends on cannot be reached (transient)."""

    category = Category.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"


class Draining(DependencyUnavailable):
    """This replica is shutting down and handed the request back before starting it: safe to
    retry (here after a restart, or on another replica) after `retry_after_s`."""

    reason = "DRAINING"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class DependencyFailed(MeshError):
    """A service failed while it was already working on this request.

    INTERNAL rather than UNAVAILABLE on purpose: UNAVAILABLE tells callers and load balancers
    "safe to retry", and replaying a request that may have killed a replica could take down the
    next one too.
    """

    category = Category.INTERNAL
    reason = "DEPENDENCY_FAILED"


class DeadlineExceeded(MeshError):
    """The work did not finish within its deadline."""

    category = Category.DEADLINE
    reason = "DEADLINE_EXCEEDED"


class UploadStalled(DeadlineExceeded):
    """The caller opened a request stream and then stopped sending before it was complete."""

    reason = "UPLOAD_STALLED"


class Cancelled(MeshError):
    """The caller went away."""

    category = Category.CANCELLED
    reason = "CANCELLED"


class InternalError(MeshError):
    """Something broke that is not the caller's fault."""

    category = Category.INTERNAL
    reason = "INTERNAL"


class NotFound(MeshError):
    """The caller named something that does not exist (any more): a job id, expired results."""

    category = Category.NOT_FOUND
    reason = "NOT_FOUND"


class FailedPrecondition(MeshError):
    """The request is valid but the thing it names is not in a state that allows it yet."""

    category = Category.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unauthenticated(MeshError):
    """The caller did not say who it is (no bearer token) where the server requires it."""

    category = Category.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(MeshError):
    """The caller's credentials are not accepted (a wrong or revoked token)."""

    category = Category.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


KNOWN: tuple[type[MeshError], ...] = (
    InvalidInput,
    InvalidAudio,
    LimitExceeded,
    UnknownModel,
    Overloaded,
    DependencyUnavailable,
    Draining,
    DependencyFailed,
    DeadlineExceeded,
    UploadStalled,
    Cancelled,
    InternalError,
    NotFound,
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
)
"""Every class a caller can get back from the wire (by its reason): all above but the base."""

BY_REASON: dict[str, type[MeshError]] = {cls.reason: cls for cls in KNOWN}

GENERAL: dict[Category, type[MeshError]] = {
    Category.INVALID_INPUT: InvalidInput,
    Category.NOT_FOUND: NotFound,
    Category.FAILED_PRECONDITION: FailedPrecondition,
    Category.OVERLOADED: Overloaded,
    Category.UNAVAILABLE: DependencyUnavailable,
    Category.DEADLINE: DeadlineExceeded,
    Category.CANCELLED: Cancelled,
    Category.UNAUTHENTICATED: Unauthenticated,
    Category.PERMISSION_DENIED: PermissionDenied,
    Category.INTERNAL: InternalError,
}
"""The class to rebuild when only the category is known (a reason this version does not know)."""


def rebuild(
    category: Category,
    reason: str,
    message: str,
    *,
    metadata: dict[str, str] | None = None,
    field: str = "",
    retry_after_s: float | None = None,
) -> MeshError:
    """The typed exception for a failure reported as (category, reason, ...), e.g. by a remote
    service: the class its reason names when that class has this category, else the category's
    general class. `field` and `retry_after_s` go to the classes that carry them."""
    cls = BY_REASON.get(reason)
    if cls is None or cls.category is not category:
        cls = GENERAL[category]
    if issubclass(cls, InvalidInput):
        return cls(message, field=field, metadata=metadata)
    if issubclass(cls, (Overloaded, Draining)):
        return cls(message, retry_after_s=retry_after_s or 1.0, metadata=metadata)
    return cls(message, metadata=metadata)
