"""Delivery of department dispatch streams (Redis Streams, consumer group "cad").

One hub per process. A single reader connection does a blocking XREAD over the streams
of every department that has a subscriber in this process, from where this hub last
read each of them, and fans entries out in memory: never one blocking Redis connection
per client. Plain XREAD (not XREADGROUP) so that every replica sees every live event;
what is still unacknowledged is tracked by the consumer group's pending list, which
the relay fills as it publishes (RELAY_CONSUMER).

Semantics (what a CAD sees):
- Every connection of a department receives every event of that department, whichever
  replica it is connected to; an ack from any of them settles the event (XACK, and
  acked_at in Postgres for recovery). An ack of an id that was not pending (repeated,
  never sent, not issued) settles nothing, in Redis or in Postgres.
- On subscribe: everything after `resume_after_event_id` (when given; from Postgres
  for what the stream no longer holds: trimmed, or left out of a rewrite, also past
  the stream's last entry) plus every unacknowledged event, in order; then live events.
- Unacknowledged events idle for `redeliver_after` are claimed (XAUTOCLAIM) and sent
  again; this also takes over the pending events of a crashed process.
- When the relay rewrites a stream from Postgres (Redis lost entries), it posts a
  notice on DISPATCH_REWRITES, which the reader reads in the same XREAD: a cursor
  past the first event put back moves back before it, and what is read again up to
  the old cursor goes out as redeliveries (at least once; never skipped).
- A subscription whose credential stops being good (a revoked API key or stopped
  department, an ended session, a dispatcher who left the agency) is closed by the
  servicer within seconds (services/credentials.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from securenow.server.domain.accounts import Principal
from securenow.server.domain.errors import DomainError, InvalidArgument, ResourceExhausted, Unavailable
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.dispatch_keys import DISPATCH_GROUP, DISPATCH_REWRITES, dispatch_stream, event_id, seq_of
from securenow.server.storage.postgres import Database
from securenow.server.storage.relay_repo import RelayRepo

log = logging.getLogger(__name__)

SUBSCRIBERS = Gauge("securenow_dispatch_subscribers", "Open dispatch subscriptions in this process.")
DELIVERED = Counter("securenow_dispatch_events_sent_total", "Dispatch events handed to subscribers.", ["kind"])
REWOUND = Counter(
    "securenow_dispatch_rewinds_total", "Live reading moved back because the relay rewrote a stream below it."
)
MAX_QUEUE = 10_000
# Stream acks are written to the outbox every 0.2 s and audited every this many seconds.
ACK_AUDIT_INTERVAL = 5.0
# AckDispatchEvent takes pending entries off the group's list this many at a time.
ACK_THROUGH_PAGE = 1000


@dataclass(frozen=True, order=True)
class DispatchEvent:
    seq: int
    event_type: str = field(compare=False)
    time: datetime = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
    redelivery: bool = field(default=False, compare=False)

    @property
    def event_id(self) -> str:
        return event_id(self.seq)


def _parse(entry_id: str, fields: dict[str, str], *, redelivery: bool = False) -> DispatchEvent | None:
    seq = seq_of(entry_id)
    if seq is None or "type" not in fields:
        return None
    return DispatchEvent(
        seq=seq,
        event_type=fields["type"],
        time=datetime.fromisoformat(fields["time"]),
        payload=json.loads(fields["payload"]),
        redelivery=redelivery,
    )


def _entry_key(entry_id: str) -> tuple[int, int]:
    """A Redis stream entry id ("<ms>-<n>") as something that sorts like it."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


@dataclass
class Outgoing:
    """Something for the subscriber other than an event (a command result)."""

    value: Any


class Subscription:
    def __init__(self, principal: Principal, department_id: str) -> None:
        self.principal = principal
        self.department_id = department_id
        self.queue: asyncio.Queue[DispatchEvent | Outgoing | DomainError | None] = asyncio.Queue()
        self.floor = 0  # live events at or below this seq were sent in the catch-up
        self.closed: DomainError | None = None
        self.last_client_activity = time.monotonic()
        self._held: list[DispatchEvent] | None = []  # live events that arrive during the catch-up

    def start(self, backlog: list[DispatchEvent]) -> None:
        """Queues the catch-up, then whatever arrived live meanwhile (without repeats)."""
        for event in backlog:
            self.queue.put_nowait(event)
        self.floor = backlog[-1].seq if backlog else 0
        held, self._held = self._held or [], None
        for event in held:
            self.offer(event)

    def offer(self, event: DispatchEvent) -> None:
        if self.closed is not None:
            return
        if self._held is not None:
            self._held.append(event)
            return
        if not event.redelivery and event.seq <= self.floor:
            return
        if self.queue.qsize() >= MAX_QUEUE:
            self.close(ResourceExhausted("the stream is too far behind; reconnect to resume", retry_after_seconds=1))
            return
        self.queue.put_nowait(event)

    def send(self, value: Any) -> None:
        self.queue.put_nowait(Outgoing(value))

    def close(self, error: DomainError | None = None) -> None:
        """Ends the subscription; `error` becomes the stream's status (None: OK)."""
        if self.closed is None:
            self.closed = error or DomainError("closed")
            self.queue.put_nowait(error)

    def touch(self) -> None:
        self.last_client_activity = time.monotonic()


class DispatchHub:
    def __init__(
        self,
        db: Database,
        redis_url: str,
        redis: aioredis.Redis,
        instance_id: str,
        *,
        redeliver_after: float = 30.0,
        claim_interval: float = 5.0,
    ) -> None:
        self._db = db
        # redis-py's annotations do not follow decode_responses; responses are str here.
        self._redis: Any = redis
        # The blocking reader has its own connection; socket timeout above the block time.
        self._reader: Any = aioredis.Redis.from_url(
            redis_url, decode_responses=True, single_connection_client=True, socket_timeout=30, socket_connect_timeout=2
        )
        self._consumer = instance_id
        self._redeliver_after_ms = int(redeliver_after * 1000)
        self._claim_interval = claim_interval
        self._subs: dict[str, set[Subscription]] = {}
        # Per department with subscribers here: the last stream entry id the reader took.
        self._cursors: dict[str, str] = {}
        # Per department whose stream was rewritten below its cursor: entries up to this
        # seq were read before, and are sent again as redeliveries.
        self._replay_through: dict[str, int] = {}
        self._rewrites_cursor: str | None = None
        # False after a reconnect until the cursor was checked against what Redis holds.
        self._rewrites_checked = True
        # Per department: the newest rewrite notice already reflected in its cursor.
        self._rewrites_seen: dict[str, tuple[int, int]] = {}
        self._changed = asyncio.Event()
        self._reader_id: int | None = None
        # Bumped when a stream is added; the reader notes which generation its XREAD has.
        self._streams_gen = 0
        self._reading_gen = 0
        # Acknowledged in Redis, to be recorded in Postgres: per (department, who acked).
        self._acks: dict[tuple[str, Principal], set[int]] = {}
        # Acks to be audited with the next flush that is due to (ACK_AUDIT_INTERVAL).
        self._unaudited: dict[tuple[str, Principal], set[int]] = {}
        self._audited_at = time.monotonic()

    # Subscriptions ------------------------------------------------------------------

    async def subscribe(
        self,
        principal: Principal,
        department_id: str,
        resume_after: str,
        *,
        field_name: str,
    ) -> Subscription:
        resume_seq: int | None = None
        if resume_after:
            resume_seq = seq_of(resume_after)
            if resume_seq is None:
                raise InvalidArgument.field(field_name, "is not an event id from this stream")
        sub = Subscription(principal, department_id)
        try:
            await self._ensure_group(department_id)
            # Register before the catch-up read, so nothing arriving meanwhile is missed;
            # duplicates are dropped by seq (floor).
            self._subs.setdefault(department_id, set()).add(sub)
            SUBSCRIBERS.inc()
            if department_id not in self._cursors:
                # Live reading starts at the stream's current end; everything before it
                # that is unacknowledged comes with the catch-up below.
                # With the newest rewrite notice, atomically: notices up to it are
                # already reflected in this cursor (and in the catch-up).
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.xrevrange(dispatch_stream(department_id), count=1)
                    pipe.xrevrange(DISPATCH_REWRITES, count=1)
                    last, notice = await pipe.execute()
                if department_id in self._subs and department_id not in self._cursors:
                    self._cursors[department_id] = last[0][0] if last else "0-0"
                    self._rewrites_seen[department_id] = _entry_key(notice[0][0]) if notice else (0, 0)
                    await self._reread_streams()
            backlog = await self._catch_up(department_id, resume_seq)
        except (RedisError, OSError) as exc:
            self.unsubscribe(sub)
            raise Unavailable(f"dispatch streams unavailable: {type(exc).__name__}") from exc
        except BaseException:
            self.unsubscribe(sub)
            raise
        sub.start(backlog)
        if backlog:
            DELIVERED.labels("catch_up").inc(len(backlog))
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.department_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            SUBSCRIBERS.dec()
            if not subs:
                del self._subs[sub.department_id]
                self._cursors.pop(sub.department_id, None)
                self._replay_through.pop(sub.department_id, None)
                self._rewrites_seen.pop(sub.department_id, None)
            self._changed.set()

    def close_all(self) -> None:
        for sub in list(self.subscriptions()):
            sub.close(Unavailable("the server is shutting down; reconnect to resume", reason="SERVER_SHUTDOWN"))

    def subscriptions(self) -> Iterable[Subscription]:
        for subs in self._subs.values():
            yield from subs

    async def _ensure_group(self, department_id: str) -> None:
        """On every subscribe (one round trip), not once per process: Redis may have lost
        the stream and its group since (the relay puts the events back)."""
        try:
            await self._redis.xgroup_create(dispatch_stream(department_id), DISPATCH_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _catch_up(self, department_id: str, resume_seq: int | None) -> list[DispatchEvent]:
        stream = dispatch_stream(department_id)
        events: dict[int, DispatchEvent] = {}
        if resume_seq is not None:
            for entry_id, fields in await self._redis.xrange(stream, min=f"({event_id(resume_seq)}", max="+"):
                ev = _parse(entry_id, fields)
                if ev is not None:
                    events[ev.seq] = ev
            last = max(events) if events else None
            # Ids are consecutive: a gap below the stream's last entry is what the stream
            # no longer holds after the cursor (trimmed once acknowledged, or left out by
            # a rewrite from Postgres). Past its last entry the stream can miss
            # acknowledged events too: a rewrite (Redis lost its data) keeps only
            # unacknowledged ones, and nothing in Redis tells how many came after them.
            # So Postgres is asked for what the stream does not show (one indexed query
            # per subscribe with a cursor, none per event): everything after the cursor
            # on a gap, else only what follows the stream's last entry (normally nothing,
            # or what was published since the XRANGE, which live reading also brings and
            # the subscription's floor drops).
            after = resume_seq if last is None or len(events) != last - resume_seq else last
            async with self._db.reader() as uow:
                older = await RelayRepo(uow.conn).published_between(department_id, after, None)
            for e in older:
                assert e.dept_seq is not None
                events.setdefault(e.dept_seq, DispatchEvent(e.dept_seq, e.event_type, e.created_at, e.payload))
        pending = await self._redis.xpending_range(stream, DISPATCH_GROUP, min="-", max="+", count=100_000)
        ids = [p["message_id"] for p in pending if seq_of(p["message_id"]) not in events]
        for start in range(0, len(ids), 1000):
            claimed = await self._redis.xclaim(
                stream, DISPATCH_GROUP, self._consumer, min_idle_time=0, message_ids=ids[start : start + 1000]
            )
            for entry_id, fields in claimed:
                if fields:
                    ev = _parse(entry_id, fields)
                    if ev is not None:
                        events.setdefault(ev.seq, ev)
        return sorted(events.values())

    # Acknowledgements ---------------------------------------------------------------

    async def ack(
        self, principal: Principal, department_id: str, event_id_text: str, *, field_name: str = "ack.event_id"
    ) -> None:
        """Acknowledges one event (StreamDispatch). Only an event the group had pending
        is recorded (in PostgreSQL, with the next flush): XACK answers 0 for an id that
        is acknowledged already (a duplicate, another connection's ack) or was never
        sent (not issued or not published yet, or lost with Redis's data, and then put
        back pending by the relay). Such an ack settles nothing and is dropped; the
        event, if it exists, stays pending and comes again.

        No ack of an event a connection received can find it not pending yet: the relay
        XADDs an entry and reads it into the group's pending list (XREADGROUP as
        RELAY_CONSUMER) in one MULTI, so no hub reads it, live or by XRANGE, before."""
        seq = seq_of(event_id_text)
        if seq is None:
            raise InvalidArgument.field(field_name, "is not an event id from this stream")
        try:
            settled = await self._redis.xack(dispatch_stream(department_id), DISPATCH_GROUP, event_id(seq))
        except (RedisError, OSError) as exc:
            raise Unavailable("dispatch streams unavailable") from exc
        if not settled:
            log.debug("ack of %s by department %s: nothing pending under it; ignored", event_id(seq), department_id)
            return
        self._acks.setdefault((department_id, principal), set()).add(seq)

    async def ack_through(
        self, principal: Principal, department_id: str, event_id_text: str, *, field_name: str = "event_id"
    ) -> None:
        """Acknowledges every pending event up to and including `event_id_text` (the
        browser console acknowledges by cursor). Exactly the events this call took off
        the group's pending list are recorded in PostgreSQL: nothing numbered but not
        published yet, nothing acknowledged already, nothing Redis lost (the relay puts
        those back pending). An id after the department's newest event (one it was never
        given) is INVALID_ARGUMENT and acknowledges nothing."""
        seq = seq_of(event_id_text)
        if seq is None:
            raise InvalidArgument.field(field_name, "is not an event id from this stream")
        async with self._db.reader() as uow:
            issued = await RelayRepo(uow.conn).last_issued_seq(department_id)
        if seq > issued:
            newest = f"the newest is {event_id(issued)}" if issued else "there is none yet"
            raise InvalidArgument.field(field_name, f"is after the newest event of this department ({newest})")
        stream = dispatch_stream(department_id)
        settled: list[int] = []
        try:
            after = "-"
            while True:
                pending = await self._redis.xpending_range(
                    stream, DISPATCH_GROUP, min=after, max=event_id(seq), count=ACK_THROUGH_PAGE
                )
                ids = [p["message_id"] for p in pending]
                if not ids:
                    break
                # One XACK per id: the answers tell which ones this call settled (another
                # connection may ack some meanwhile, and records those itself).
                async with self._redis.pipeline(transaction=False) as pipe:
                    for entry_id in ids:
                        pipe.xack(stream, DISPATCH_GROUP, entry_id)
                    answers = await pipe.execute()
                settled += [s for i, n in zip(ids, answers, strict=True) if n and (s := seq_of(i)) is not None]
                if len(ids) < ACK_THROUGH_PAGE:
                    break
                after = f"({ids[-1]}"
        except (RedisError, OSError) as exc:
            self._keep_acks(department_id, principal, settled)  # what was settled before Redis failed
            raise Unavailable("dispatch streams unavailable") from exc
        try:
            async with self._db.unit_of_work() as uow:
                if settled:
                    await RelayRepo(uow.conn).mark_acked([(department_id, s) for s in settled])
                await uow.audit.record(
                    principal,
                    AuditEntry(
                        "dispatch.ack",
                        "department",
                        department_id,
                        details={"through": event_id(seq), "settled": len(settled)},
                    ),
                )
        except Unavailable:
            # Redis has them acknowledged: the flush records (and audits) them later.
            self._keep_acks(department_id, principal, settled)
            raise

    def _keep_acks(self, department_id: str, principal: Principal, seqs: list[int]) -> None:
        if seqs:
            self._acks.setdefault((department_id, principal), set()).update(seqs)

    async def _flush_acks(self, *, final: bool = False) -> None:
        """Records the acks of the last moments on the outbox rows (what a rebuild of the
        streams goes by), and every ACK_AUDIT_INTERVAL, in the same transaction, as one
        audit entry per department and acknowledger with the event ids (one entry per
        ack would double the audit log's volume under load)."""
        acks, self._acks = self._acks, {}
        for key, seqs in acks.items():  # sets: a failed flush adding them twice is harmless
            self._unaudited.setdefault(key, set()).update(seqs)
        audit_due = bool(self._unaudited) and (final or time.monotonic() - self._audited_at >= ACK_AUDIT_INTERVAL)
        if not acks and not audit_due:
            return
        try:
            async with self._db.unit_of_work() as uow:
                if acks:
                    await RelayRepo(uow.conn).mark_acked([(d, seq) for (d, _), seqs in acks.items() for seq in seqs])
                if audit_due:
                    await uow.audit.record_many(
                        [
                            (
                                principal,
                                AuditEntry(
                                    "dispatch.ack",
                                    "department",
                                    department_id,
                                    details={"event_ids": [event_id(seq) for seq in sorted(seqs)]},
                                ),
                            )
                            for (department_id, principal), seqs in self._unaudited.items()
                        ]
                    )
        except Unavailable:
            for key, seqs in acks.items():  # keep them for the next flush
                self._acks.setdefault(key, set()).update(seqs)
            raise
        if audit_due:
            self._unaudited = {}
            self._audited_at = time.monotonic()

    # Background loops -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._read_loop(stop), name="dispatch-reader"),
            asyncio.create_task(self._every(stop, self._claim_interval, self._claim_stale), name="dispatch-claim"),
            asyncio.create_task(self._every(stop, 0.2, self._flush_acks), name="dispatch-acks"),
        ]
        try:
            await stop.wait()
        finally:
            self.close_all()
            self._changed.set()
            await self._unblock_reader()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self._flush_acks(final=True)
            except Unavailable:
                log.warning("unflushed dispatch acks were lost; those events will be redelivered")
            await self._reader.aclose()

    async def _every(self, stop: asyncio.Event, interval: float, fn: Any) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
            try:
                await fn()
            except (Unavailable, RedisError, OSError) as exc:
                log.warning("dispatch %s: %s", getattr(fn, "__name__", fn), type(exc).__name__)
            except Exception:
                log.exception("dispatch %s failed", getattr(fn, "__name__", fn))

    async def _unblock_reader(self) -> None:
        if self._reader_id is not None:
            try:
                await self._redis.client_unblock(self._reader_id)
            except (RedisError, OSError):
                pass

    async def _reread_streams(self, within: float = 1.0) -> None:
        """Returns once the reader's XREAD covers the streams added so far. An UNBLOCK
        that reaches Redis before the XREAD it was meant for is lost (the new stream
        would wait out the block time), so it is repeated until the reader has issued
        an XREAD built after the change; bounded, as the reader may be backing off."""
        self._streams_gen += 1
        target = self._streams_gen
        self._changed.set()
        deadline = time.monotonic() + within
        while self._reading_gen < target and time.monotonic() < deadline:
            await self._unblock_reader()
            await asyncio.sleep(0.005)

    async def _read_loop(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            if not self._cursors:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
            self._changed.clear()
            self._reading_gen = self._streams_gen
            try:
                if self._reader_id is None:
                    self._reader_id = int(await self._reader.client_id())
                if self._rewrites_cursor is None:
                    last = await self._reader.xrevrange(DISPATCH_REWRITES, count=1)
                    self._rewrites_cursor = last[0][0] if last else "0-0"
                elif not self._rewrites_checked:
                    await self._check_rewrites_cursor()
                self._rewrites_checked = True
                streams = {DISPATCH_REWRITES: self._rewrites_cursor}
                streams.update((dispatch_stream(d), cursor) for d, cursor in self._cursors.items())
                response = await self._reader.xread(streams, count=500, block=5000)
                backoff = 0.1
            except ResponseError as exc:
                log.warning("dispatch reader: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("dispatch reader: Redis unavailable (%s); retrying", type(exc).__name__)
                self._reader_id = None
                self._rewrites_checked = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            response = dict(response or [])
            rewound = self._rewind(response.pop(DISPATCH_REWRITES, []))
            for stream, entries in response.items():
                department_id = stream.split(":", 1)[1]
                if department_id in rewound:
                    continue  # read again from the rewound cursor
                if entries and department_id in self._cursors:
                    # Stream ids are the departments' sequence numbers: they survive
                    # Redis rebuilding the stream, so the cursor stays valid.
                    self._cursors[department_id] = entries[-1][0]
                replay_through = self._replay_through.get(department_id, 0)
                self._fan_out(department_id, entries, redelivery=False, replay_through=replay_through)
                if replay_through and entries and (seq_of(entries[-1][0]) or 0) >= replay_through:
                    del self._replay_through[department_id]

    async def _check_rewrites_cursor(self) -> None:
        """After a reconnect: a Redis that came back empty (a restart without
        persistence, a failover to another host) numbers new notices from its own clock,
        which may be behind the ids read before; reading on after the old cursor would
        miss them. The stream then ends below the cursor (or is gone): read it from its
        start, and forget which notices the departments' cursors reflect (those ids
        belonged to the lost stream; at worst a replay is sent twice)."""
        last = await self._reader.xrevrange(DISPATCH_REWRITES, count=1)
        assert self._rewrites_cursor is not None
        if not last or _entry_key(last[0][0]) < _entry_key(self._rewrites_cursor):
            log.warning("dispatch reader: the rewrite notices Redis holds end before the ones read; reading them anew")
            self._rewrites_cursor = "0-0"
            self._rewrites_seen = dict.fromkeys(self._rewrites_seen, (0, 0))

    def _rewind(self, notices: list[tuple[str, dict[str, str]]]) -> set[str]:
        """Moves the cursor of each rewritten stream back to before the first event put
        back; returns the departments whose cursor moved."""
        rewound: set[str] = set()
        for notice_id, fields in notices:
            self._rewrites_cursor = notice_id
            department_id = fields.get("department", "")
            from_seq = seq_of(fields.get("from_seq", ""))
            cursor = self._cursors.get(department_id)
            if cursor is None or from_seq is None or from_seq == 0:
                continue
            if _entry_key(notice_id) <= self._rewrites_seen.get(department_id, (0, 0)):
                continue  # the cursor was taken after this rewrite
            at = seq_of(cursor) or 0
            if from_seq - 1 < at:
                self._cursors[department_id] = event_id(from_seq - 1)
                self._replay_through[department_id] = max(at, self._replay_through.get(department_id, 0))
                rewound.add(department_id)
                REWOUND.inc()
                log.info(
                    "dispatch stream of %s rewritten from %d; reading it again from there", department_id, from_seq
                )
        return rewound

    def _fan_out(
        self,
        department_id: str,
        entries: list[tuple[str, dict[str, str]]],
        *,
        redelivery: bool,
        replay_through: int = 0,
    ) -> None:
        subs = self._subs.get(department_id)
        for entry_id, fields in entries:
            if not fields:
                continue
            ev = _parse(entry_id, fields, redelivery=redelivery or (seq_of(entry_id) or 0) <= replay_through)
            if ev is None:
                continue
            for sub in list(subs or ()):
                sub.offer(ev)
            DELIVERED.labels("redelivery" if redelivery else "live").inc()

    async def _claim_stale(self) -> None:
        """XAUTOCLAIM events nobody acked for `redeliver_after` (including those of a
        crashed process) and send them again to this process's subscribers."""
        for department_id in list(self._subs):
            stream = dispatch_stream(department_id)
            start = "0-0"
            while True:
                result = await self._redis.xautoclaim(
                    stream, DISPATCH_GROUP, self._consumer, self._redeliver_after_ms, start_id=start, count=200
                )
                start, entries = result[0], result[1]
                self._fan_out(department_id, entries, redelivery=True)
                if start == "0-0" or not entries:
                    break
