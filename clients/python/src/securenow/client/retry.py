"""Retrying: exponential backoff with jitter, bounded by a total deadline, honouring
the server's RetryInfo delay."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from securenow.client.errors import SecureNowError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Codes after which repeating the same (idempotent) request may succeed.
TRANSIENT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)

#: Called before each retry with (attempt number that failed, its error, delay in s).
RetryHook = Callable[[int, SecureNowError, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry. Delays grow from `initial_backoff` by `multiplier` up to
    `max_backoff`, each randomised by +/- `jitter` (a fraction), and are never shorter
    than the server's RetryInfo delay. `total_timeout` bounds the whole operation
    (None: no bound); `attempt_timeout` bounds one attempt of a unary call."""

    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    total_timeout: float | None = 30.0
    attempt_timeout: float | None = 10.0
    retry_codes: frozenset[grpc.StatusCode] = field(default=TRANSIENT_CODES)

    def delay(self, retry_number: int, server_hint: float | None = None) -> float:
        """The pause before retry number `retry_number` (0 for the first retry)."""
        # The exponent stops growing once the pause is capped: a stream that reconnects
        # for hours must not reach multiplier**1024, which overflows a float.
        base = self.initial_backoff
        for _ in range(min(retry_number, 64)):
            if base >= self.max_backoff:
                break
            base *= self.multiplier
        base = min(self.max_backoff, base)
        jittered = base * random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        if server_hint is not None:
            jittered = max(jittered, server_hint)
        return max(0.0, jittered)


class Backoff:
    """Retry state of one operation: counts retries and watches the deadline.
    `reset()` after progress (for example a stream that delivered a message)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._retries = 0
        self._deadline = self._new_deadline()

    def _new_deadline(self) -> float | None:
        total = self.policy.total_timeout
        return None if total is None else time.monotonic() + total

    @property
    def retries(self) -> int:
        return self._retries

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: unbounded)."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def attempt_timeout(self) -> float | None:
        """Timeout for the next attempt: the per-attempt bound, capped by the deadline."""
        left = self.remaining()
        per = self.policy.attempt_timeout
        if left is None:
            return per
        return max(0.001, left if per is None else min(per, left))

    def next_delay(self, error: SecureNowError) -> float | None:
        """The pause before the next retry, or None when `error` must not be retried
        or the pause would run past the deadline."""
        if error.code not in self.policy.retry_codes:
            return None
        delay = self.policy.delay(self._retries, error.retry_delay)
        left = self.remaining()
        if left is not None and delay >= left:
            return None
        self._retries += 1
        return delay

    def reset(self) -> None:
        self._retries = 0
        self._deadline = self._new_deadline()


async def call_with_retry(
    attempt: Callable[[float | None], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: RetryHook | None = None,
) -> T:
    """Runs `attempt(timeout)` until it succeeds, fails with a code that is not
    retryable, or the deadline passes; raises SecureNowError for the last failure.
    `attempt` must be safe to repeat (for example a request with a fixed request_id)."""
    backoff = Backoff(policy)
    number = 0
    while True:
        number += 1
        try:
            return await attempt(backoff.attempt_timeout())
        except grpc.aio.AioRpcError as exc:
            error = SecureNowError.from_rpc_error(exc)
        delay = backoff.next_delay(error)
        if delay is None:
            raise error
        log.info("attempt %d failed (%s); retrying in %.2f s", number, error.code.name, delay)
        if on_retry is not None:
            on_retry(number, error, delay)
        await asyncio.sleep(delay)
