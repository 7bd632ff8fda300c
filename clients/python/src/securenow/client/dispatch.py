"""DispatchConsumer: a CAD system's side of AgencyService.StreamDispatch.

It subscribes from a persisted cursor, hands events to the caller, sends acks,
commands and heartbeats, drops duplicate deliveries, and reconnects with backoff
(resuming from the cursor) until it is closed or the server refuses its credentials.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from securenow.client.cursor import CursorStore, is_after
from securenow.client.errors import SecureNowError
from securenow.client.retry import Backoff, RetryPolicy
from securenow.v1 import agency_pb2, common_pb2

if TYPE_CHECKING:
    from securenow.client.client import SecureNowClient

log = logging.getLogger(__name__)

Event = agency_pb2.StreamDispatchResponse

#: Errors after which reconnecting may help; anything else stops the consumer
#: (UNAUTHENTICATED and PERMISSION_DENIED above all: a revoked key must not loop).
RECONNECT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
RECONNECT_POLICY = RetryPolicy(
    initial_backoff=0.5, max_backoff=30.0, total_timeout=None, attempt_timeout=None, retry_codes=RECONNECT_CODES
)


class _Connection:
    """One StreamDispatch call: its outgoing queue and the commands awaiting results
    (the server answers commands in the order they were sent)."""

    def __init__(self) -> None:
        self.outgoing: asyncio.Queue[agency_pb2.StreamDispatchRequest | None] = asyncio.Queue()
        # (what the command is about, its future), oldest first.
        self.pending: collections.deque[asyncio.Future[agency_pb2.CommandResult]] = collections.deque()

    def send(self, request: agency_pb2.StreamDispatchRequest) -> None:
        self.outgoing.put_nowait(request)

    def half_close(self) -> None:
        self.outgoing.put_nowait(None)

    async def requests(self) -> AsyncIterator[agency_pb2.StreamDispatchRequest]:
        while True:
            request = await self.outgoing.get()
            if request is None:
                return
            yield request

    def fail_pending(self, error: SecureNowError) -> None:
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)


class DispatchConsumer:
    """Consumes a department's dispatch stream.

    Use as an async context manager and iterate it for events (StreamDispatchResponse
    messages other than heartbeats and command results). Call `ack(event_id)` once an
    event is handled: the cursor advances to the highest acked id and is saved in
    `cursor_store`; a new consumer resumes after it. Events already handed out are not
    handed out again (the last `remember` ids are kept). `accept`, `decline` and
    `update_incident` return the server's CommandResult (code 0 is OK; a failed
    command leaves the stream open); if the stream breaks before the result arrives
    they raise SecureNowError(UNAVAILABLE, reason "STREAM_INTERRUPTED") and the
    command may or may not have been applied.

    Iteration raises SecureNowError when the consumer stops for good: UNAUTHENTICATED
    or PERMISSION_DENIED (for example a revoked key), another non-transient error, or
    `reconnect.total_timeout` passing without a connection.
    """

    def __init__(
        self,
        client: SecureNowClient,
        cursor_store: CursorStore,
        *,
        heartbeat_interval: float = 15.0,
        receive_timeout: float | None = 60.0,
        reconnect: RetryPolicy = RECONNECT_POLICY,
        remember: int = 10_000,
        command_timeout: float = 30.0,
    ) -> None:
        self._client = client
        self._store = cursor_store
        self._heartbeat_interval = heartbeat_interval
        self._receive_timeout = receive_timeout
        self._policy = reconnect
        self._remember = remember
        self._command_timeout = command_timeout
        self._cursor = cursor_store.load()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._seen: collections.OrderedDict[str, bool] = collections.OrderedDict()  # id -> acked
        self._connection: _Connection | None = None
        self._connection_ready = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        # close() was called: no event is handed out any more (its ack could not reach
        # the server; left alone, it stays pending there and comes again).
        self._closed = False
        self._error: SecureNowError | None = None
        self.connects = 0  # how many times a stream was opened

    # Lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> DispatchConsumer:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Starts connecting (idempotent; iteration starts it too)."""
        if self._runner is None and not self._closing:
            self._runner = asyncio.create_task(self._run(), name="securenow-dispatch")

    async def close(self, grace: float = 5.0) -> None:
        """Stops the consumer. The request stream is half-closed first, so acks and
        commands already sent are processed by the server before the stream ends
        (waiting at most `grace` seconds). Events not yet taken are not handed out."""
        self._closing = True
        self._closed = True
        connection = self._connection
        runner = self._runner
        try:
            if runner is not None and not runner.done() and connection is not None:
                connection.half_close()
                # asyncio.wait neither raises the runner's outcome nor swallows the
                # cancellation of the task calling close().
                await asyncio.wait([runner], timeout=grace)
        finally:
            if runner is not None and not runner.done():
                runner.cancel()
                await asyncio.wait([runner])
            self._finish(None)

    @property
    def cursor(self) -> str:
        """The highest acknowledged event id ("" before the first ack)."""
        return self._cursor

    @property
    def error(self) -> SecureNowError | None:
        """Why the consumer stopped, if it stopped on an error."""
        return self._error

    @property
    def connected(self) -> bool:
        return self._connection is not None

    # Events -----------------------------------------------------------------------------------

    def __aiter__(self) -> DispatchConsumer:
        return self

    async def __anext__(self) -> Event:
        self.start()
        event = None if self._closed else await self._events.get()
        if event is None or self._closed:
            if not self._closed:
                self._events.put_nowait(None)  # every later call ends too
            if self._error is not None:
                raise self._error.fresh()
            raise StopAsyncIteration
        return event

    async def next_event(self, within: float | None = None) -> Event:
        """The next event, waiting at most `within` seconds (TimeoutError)."""
        return await asyncio.wait_for(self.__anext__(), within)

    def ack(self, event_id: str) -> None:
        """Acknowledges an event: it is not delivered again, and the cursor is saved
        when this is the highest id acked so far (only ids this consumer handed out
        move the cursor)."""
        if not event_id:
            return
        delivered = event_id in self._seen
        self._remember_id(event_id, acked=True)
        if delivered and is_after(event_id, self._cursor):
            self._store.save(event_id)
            self._cursor = event_id
        if self._connection is not None:
            self._connection.send(agency_pb2.StreamDispatchRequest(ack=agency_pb2.Ack(event_id=event_id)))
        # Not connected: the server redelivers the event and it is acked again then.

    # Commands ---------------------------------------------------------------------------------

    async def accept(self, alert_id: str, assigned_unit: str = "", eta_minutes: int = 0) -> agency_pb2.CommandResult:
        """Accepts an alert and dispatches a unit."""
        return await self.command(
            agency_pb2.StreamDispatchRequest(
                accept=agency_pb2.AcceptAlert(alert_id=alert_id, assigned_unit=assigned_unit, eta_minutes=eta_minutes)
            )
        )

    async def decline(self, alert_id: str, reason: str = "") -> agency_pb2.CommandResult:
        """Declines an alert; the server routes it elsewhere."""
        return await self.command(
            agency_pb2.StreamDispatchRequest(decline=agency_pb2.DeclineAlert(alert_id=alert_id, reason=reason))
        )

    async def update_incident(
        self,
        incident_id: str,
        status: common_pb2.IncidentStatus.ValueType,
        *,
        assigned_unit: str = "",
        notes: str = "",
    ) -> agency_pb2.CommandResult:
        """Moves an incident forward (dispatched -> on_scene -> resolved)."""
        return await self.command(
            agency_pb2.StreamDispatchRequest(
                update=agency_pb2.IncidentUpdate(
                    incident_id=incident_id, status=status, assigned_unit=assigned_unit, notes=notes
                )
            )
        )

    async def command(self, request: agency_pb2.StreamDispatchRequest) -> agency_pb2.CommandResult:
        """Sends a command (accept, decline or update) and returns its result. Waits
        up to `command_timeout` seconds for a connection and the result."""
        if request.WhichOneof("kind") not in ("accept", "decline", "update"):
            raise ValueError("a command is accept, decline or update")
        self.start()

        async def send_and_wait() -> agency_pb2.CommandResult:
            while True:
                self._raise_if_stopped()
                connection = self._connection
                if connection is not None:
                    break
                await self._connection_ready.wait()
            future: asyncio.Future[agency_pb2.CommandResult] = asyncio.get_running_loop().create_future()
            connection.pending.append(future)
            connection.send(request)
            return await future

        try:
            return await asyncio.wait_for(send_and_wait(), self._command_timeout)
        except TimeoutError:
            raise SecureNowError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no command result in time; it may or may not have been applied"
            ) from None

    def _raise_if_stopped(self) -> None:
        if self._error is not None:
            raise self._error.fresh()
        if self._closing:
            raise SecureNowError(grpc.StatusCode.CANCELLED, "the consumer is closed", "CONSUMER_CLOSED")

    # Connection loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end iteration, not hang it
            log.exception("dispatch consumer failed")
            self._finish(SecureNowError(grpc.StatusCode.UNKNOWN, f"dispatch consumer failed: {exc!r}"))

    async def _connect_loop(self) -> None:
        backoff = Backoff(self._policy)
        while not self._closing:
            try:
                await self._stream_once(backoff)
                if self._closing:
                    break
                error = SecureNowError(grpc.StatusCode.UNAVAILABLE, "the server ended the stream", "STREAM_ENDED")
            except SecureNowError as err:
                error = err
            if self._closing:
                break
            delay = backoff.next_delay(error)
            if delay is None:
                log.error("dispatch stream stopped: %s", error)
                self._finish(error)
                return
            log.warning("dispatch stream interrupted (%s); reconnecting in %.2f s", error, delay)
            await asyncio.sleep(delay)
        self._finish(None)

    async def _stream_once(self, backoff: Backoff) -> None:
        """Runs one StreamDispatch call until it ends; raises SecureNowError."""
        connection = _Connection()
        connection.send(
            agency_pb2.StreamDispatchRequest(subscribe=agency_pb2.Subscribe(resume_after_event_id=self._cursor))
        )
        session = self._client.session
        used_token = await session.bearer()
        call = self._client.agency.StreamDispatch(connection.requests())
        self.connects += 1
        self._connection = connection
        self._connection_ready.set()
        heartbeats = asyncio.create_task(self._heartbeats(connection))
        try:
            while True:
                try:
                    message = await asyncio.wait_for(call.read(), self._receive_timeout)
                except TimeoutError:
                    raise SecureNowError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"nothing received for {self._receive_timeout} s (not even a heartbeat)",
                        "RECEIVE_TIMEOUT",
                    ) from None
                if message is grpc.aio.EOF:
                    return
                backoff.reset()
                self._handle(connection, message)
        except grpc.aio.AioRpcError as exc:
            if await session.recover(exc, used_token):
                raise SecureNowError(grpc.StatusCode.UNAVAILABLE, "access token refreshed; reconnecting") from None
            raise SecureNowError.from_rpc_error(exc) from None
        finally:
            self._connection = None
            self._connection_ready.clear()
            heartbeats.cancel()
            call.cancel()
            connection.fail_pending(
                SecureNowError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the dispatch stream ended before the command's result arrived; "
                    "it may or may not have been applied",
                    "STREAM_INTERRUPTED",
                )
            )

    async def _heartbeats(self, connection: _Connection) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            connection.send(agency_pb2.StreamDispatchRequest(heartbeat=agency_pb2.Heartbeat()))

    def _handle(self, connection: _Connection, message: Event) -> None:
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            return
        if kind == "command_result":
            result = message.command_result
            if not connection.pending:
                log.warning("a command result nobody waits for: %s", result.message or result.code)
                return
            future = connection.pending.popleft()
            if not future.done():
                future.set_result(result)
            return
        event_id = message.event_id
        if event_id:
            acked = self._seen.get(event_id)
            if acked is not None:
                if acked:  # the server lost our ack (we were disconnected): ack again
                    connection.send(agency_pb2.StreamDispatchRequest(ack=agency_pb2.Ack(event_id=event_id)))
                log.debug("dropping duplicate delivery of %s", event_id)
                return
            self._remember_id(event_id, acked=False)
        self._events.put_nowait(message)

    def _remember_id(self, event_id: str, *, acked: bool) -> None:
        """Marks an id as handed out (and whether it was acked), forgetting the oldest."""
        self._seen[event_id] = acked
        self._seen.move_to_end(event_id)
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)

    def _finish(self, error: SecureNowError | None) -> None:
        """Ends iteration (with `error`, if any) and wakes waiting commands."""
        if self._error is None and error is not None:
            self._error = error
        self._closing = True
        self._connection_ready.set()  # wake commands waiting for a connection
        self._events.put_nowait(None)
