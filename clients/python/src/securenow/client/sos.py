"""SOS helpers: raising an alert with safe retries, and watching one across
reconnects."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import grpc

from securenow.client.auth import Session
from securenow.client.errors import SecureNowError
from securenow.client.retry import Backoff, RetryHook, RetryPolicy, call_with_retry
from securenow.v1 import common_pb2, sos_pb2

if TYPE_CHECKING:
    from securenow.v1.sos_pb2_grpc import SosServiceAsyncStub

log = logging.getLogger(__name__)

#: WatchSos events after which nothing about the alert can change.
FINAL_EVENTS = frozenset({"resolved", "cancelled"})
FINAL_STATUSES = frozenset({common_pb2.SOS_STATUS_RESOLVED, common_pb2.SOS_STATUS_CANCELLED})

RAISE_POLICY = RetryPolicy()
#: Watching reconnects on UNAVAILABLE for as long as it takes (cancel to stop).
WATCH_POLICY = RetryPolicy(
    initial_backoff=0.5, max_backoff=10.0, total_timeout=None, retry_codes=frozenset({grpc.StatusCode.UNAVAILABLE})
)


async def raise_sos(
    stub: SosServiceAsyncStub,
    request: sos_pb2.RaiseSosRequest,
    *,
    policy: RetryPolicy = RAISE_POLICY,
    on_retry: RetryHook | None = None,
) -> sos_pb2.SosAlert:
    """Sends RaiseSos with one request_id (a new uuid4 unless the request has one)
    for every attempt, so retries after a lost response return the same alert.
    Retries the policy's transient codes only; raises SecureNowError otherwise."""
    if not request.request_id:
        request.request_id = str(uuid.uuid4())

    async def attempt(attempt_timeout: float | None) -> sos_pb2.SosAlert:
        response: sos_pb2.RaiseSosResponse = await stub.RaiseSos(request, timeout=attempt_timeout)
        return response.alert

    return await call_with_retry(attempt, policy, on_retry=on_retry)


async def watch_sos(
    stub: SosServiceAsyncStub, session: Session, alert_id: str, *, policy: RetryPolicy = WATCH_POLICY
) -> AsyncGenerator[sos_pb2.WatchSosResponse, None]:
    """Yields WatchSos messages. After a reconnect the server starts again with a
    "snapshot". Ends after a "resolved" or "cancelled" message (or any message whose
    alert is final) or when the server ends the stream normally; raises
    SecureNowError for errors that are not retried."""
    backoff = Backoff(policy)
    recovered = False
    while True:
        used_token = await session.bearer()
        call = stub.WatchSos(sos_pb2.WatchSosRequest(alert_id=alert_id))
        try:
            async for message in call:
                backoff.reset()
                recovered = False
                yield message
                if message.event in FINAL_EVENTS or message.alert.status in FINAL_STATUSES:
                    return
            return
        except grpc.aio.AioRpcError as exc:
            if not recovered and await session.recover(exc, used_token):
                recovered = True
                continue
            error = SecureNowError.from_rpc_error(exc)
            delay = backoff.next_delay(error)
            if delay is None:
                raise error from None
            log.info("watch of %s interrupted (%s); reconnecting in %.2f s", alert_id, error.code.name, delay)
        finally:
            call.cancel()
        await asyncio.sleep(delay)
