"""Domain errors. The transport layer maps each class to one gRPC status code
(transport/errors.py); `reason` becomes google.rpc.ErrorInfo.reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    reason: str = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        # Goes to google.rpc.ErrorInfo.metadata (for example the conflicting field).
        self.metadata = metadata or {}


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations), reason=reason)
        self.violations = violations

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after_seconds: float, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(DomainError):
    """A dependency (database, Redis) cannot be reached; the caller may retry."""

    reason = "DEPENDENCY_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_seconds: float = 1.0, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds
