"""Structured errors: gRPC status plus the google.rpc details the server attaches
(ErrorInfo reason, BadRequest field violations, RetryInfo delay)."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_CODES_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode for a numeric google.rpc.Code (UNKNOWN if out of range)."""
    return _CODES_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


class SecureNowError(Exception):
    """A failed call, with the server's structured error details.

    code: the gRPC status code; message: text for humans; reason: the machine-readable
    google.rpc.ErrorInfo reason (for example "INVALID_TOKEN"; "" when absent);
    field_violations: BadRequest field -> description; retry_delay: the server's
    RetryInfo delay in seconds (None when absent).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        field_violations: dict[str, str] | None = None,
        retry_delay: float | None = None,
        *,
        domain: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.field_violations: dict[str, str] = dict(field_violations or {})
        self.retry_delay = retry_delay
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})

    def fresh(self) -> SecureNowError:
        """An equal error with no traceback, for raising a stored error once more:
        raising one instance again and again grows its traceback by every raise (and
        keeps those frames alive)."""
        return SecureNowError(
            self.code,
            self.message,
            self.reason,
            self.field_violations,
            self.retry_delay,
            domain=self.domain,
            metadata=self.metadata,
        )

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> SecureNowError:
        """Builds the error from a google.rpc.Status and its details."""
        reason = domain = ""
        metadata: dict[str, str] = {}
        fields: dict[str, str] = {}
        retry_delay: float | None = None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.update({v.field: v.description for v in bad.field_violations})
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
        return cls(
            status_code(status.code), status.message, reason, fields, retry_delay, domain=domain, metadata=metadata
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> SecureNowError:
        """Builds the error from a failed call, reading `grpc-status-details-bin`."""
        code: grpc.StatusCode = error.code()
        message: str = error.details() or ""
        status = _rich_status(error.trailing_metadata())
        if status is None:
            return cls(code, message)
        parsed = cls.from_status(status)
        # The status line is authoritative; the details only add to it.
        parsed.code = code
        parsed.message = message or parsed.message
        return parsed


def _rich_status(trailing: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed details blob must not hide the status itself
                return None
    return None
