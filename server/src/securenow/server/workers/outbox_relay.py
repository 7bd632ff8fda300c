"""Moves committed outbox events to Redis: dispatch events onto each department's
stream (entry id = the department's sequence number, so ids are stable across
republishing) and the seed's Pub/Sub channels.

One relay leads at a time (advisory lock); it wakes on NOTIFY securenow_outbox.
Per loop:
  1. Claim new events and number them; the same statement creates their webhook
     deliveries. This needs Postgres only, so webhooks flow while Redis is down.
  2. If Redis lost its data (the epoch key is gone), rebuild every department's
     stream from the unacknowledged events in Postgres, in order.
  3. Publish what is numbered but not in Redis yet (left over from a failed publish,
     or just claimed), in order per department, then mark it published.
A crash anywhere repeats at most a publish; an XADD of an id the stream already has
is that repeat and is skipped. Nothing committed is ever skipped. While Redis is
unreachable the relay keeps leading and numbering, and publishes once it is back.
Every `reconcile_interval` the relay also checks that each department's stream holds
all its published, unacknowledged events (Redis can lose writes and keep the epoch),
and rewrites a stream that does not (reconcile()); every `trim_interval` it trims
what is acknowledged and older than `keep_acked_seconds` from the streams (trim()).

Right after its XADDs the relay reads the new entries into the consumer group (as
consumer "relay"), so every published event is in the group's pending list until a CAD
acknowledges it: stream hubs take unacknowledged events from there (catch-up on
subscribe, XAUTOCLAIM after the redelivery interval) while they deliver live events by
plain XREAD, which lets every replica see every event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError, ResponseError

from securenow.server.domain.errors import Unavailable
from securenow.server.storage.dispatch_keys import (
    DISPATCH_EPOCH_KEY,
    DISPATCH_GROUP,
    DISPATCH_REWRITES,
    DISPATCH_REWRITES_MAXLEN,
    RELAY_CONSUMER,
    dispatch_stream,
    event_id,
    seq_of,
)
from securenow.server.storage.postgres import Database
from securenow.server.storage.relay_repo import OutboxEvent, RelayRepo, active_alert_value
from securenow.server.workers.leader import AdvisoryLeader

log = logging.getLogger(__name__)

# Outbox topics that are also published on a Redis Pub/Sub channel of the same name.
PUBSUB_TOPICS = frozenset({"sos:emergency", "booking:update", "provider:status"})
# Topic of WatchSos events: published on sos:alert:{alert_id}.
WATCH_TOPIC = "sos:alert"


@dataclass(frozen=True)
class AlertMarker:
    """A change of the seed's `sos:active:{alert_id}` key: SET `value` (only if the key
    exists, with `existing_only`), or DEL with value None."""

    key: str
    value: str | None
    existing_only: bool = False


def active_alert_marker(e: OutboxEvent) -> AlertMarker | None:
    """The seed's `sos:active:{alert_id}` key, "{user_id},{lat},{lng},{timestamp}" (see
    active_alert_value): set when an alert is raised (or handed to another agency),
    rewritten when its current location moves (only while the key exists, so a late
    location event never brings back a closed alert's key), removed when the alert is
    cancelled or resolved."""
    if e.topic == "sos:emergency" and e.event_type == "alert_raised":
        alert = e.payload["alert"]
        loc = alert.get("location") or {}
        when = datetime.fromisoformat(loc.get("time") or alert["create_time"]).timestamp()
        value = active_alert_value(alert["user_id"], loc.get("lat"), loc.get("lng"), when)
        return AlertMarker(f"sos:active:{alert['id']}", value)
    if e.topic == WATCH_TOPIC and e.event_type == "location" and e.aggregate_id:
        loc, user_id = e.payload.get("location"), e.payload.get("user_id")
        if not loc or not user_id:
            return None  # written before location events carried the position
        when = datetime.fromisoformat(loc["time"]).timestamp()
        value = active_alert_value(user_id, loc["lat"], loc["lng"], when)
        return AlertMarker(f"sos:active:{e.aggregate_id}", value, existing_only=True)
    if e.topic == WATCH_TOPIC and e.event_type in ("cancelled", "resolved") and e.aggregate_id:
        return AlertMarker(f"sos:active:{e.aggregate_id}", None)
    return None


def pubsub_channel(e: OutboxEvent) -> str | None:
    if e.topic in PUBSUB_TOPICS:
        return e.topic
    if e.topic == WATCH_TOPIC and e.aggregate_id:
        return f"{WATCH_TOPIC}:{e.aggregate_id}"
    return None


BATCH = 500
EPOCH_CHECK_INTERVAL = 0.25
# Entries per MULTI when a stream is rewritten from Postgres.
REWRITE_BATCH = 1000
# Old unacknowledged events checked for a lost acknowledgement per trim pass.
LOST_ACK_BATCH = 1000
LOST_ACK_START = (uuid.UUID(int=0), 0)
LEADERSHIP_CHECK_TIMEOUT = 2.0
# A round trip per pass cost a tenth of RaiseSos capacity at 200 alerts/s on two cores;
# at most one every half second leaves a split brain that short, and what an old leader
# publishes past anyway is caught by the XADD check and reconciliation.
LEADERSHIP_CONFIRM_INTERVAL = 0.5

PUBLISHED = Counter("securenow_outbox_published_total", "Outbox events published to Redis.", ["kind"])
LEADER = Gauge("securenow_outbox_relay_leader", "1 while this process is the outbox relay leader.")
TRIMMED = Counter("securenow_dispatch_entries_trimmed_total", "Settled entries trimmed from dispatch streams.")
LOST_ACKS = Counter(
    "securenow_dispatch_lost_acks_recorded_total",
    "Acknowledgements found in Redis but missing in PostgreSQL (a process died before recording them).",
)
REPAIRED = Counter(
    "securenow_outbox_repaired_total",
    "Published, unacknowledged events found missing from their Redis stream and published again.",
)
LAG = Histogram(
    "securenow_outbox_publish_lag_seconds",
    "From an event's commit to its publication in Redis.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STEP = Histogram(
    "securenow_outbox_relay_step_seconds",
    "Duration of one relay pass (claim, publish, mark).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def stream_fields(e: OutboxEvent) -> dict[Any, Any]:
    return {
        "type": e.event_type,
        "time": e.created_at.isoformat(),
        "payload": json.dumps(e.payload, separators=(",", ":"), default=str),
    }


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        redis: aioredis.Redis,
        dsn: str,
        *,
        idle_poll_seconds: float = 1.0,
        reconcile_interval: float = 2.0,
        trim_interval: float = 30.0,
        keep_acked_seconds: float = 300.0,
    ) -> None:
        self._db = db
        # redis-py's annotations do not follow decode_responses; responses are str here.
        self._redis: Any = redis
        self._leader = AdvisoryLeader(dsn, "outbox-relay")
        self._wake = asyncio.Event()
        self._idle_poll = idle_poll_seconds
        self._known_groups: set[str] = set()
        # Events numbered but not published exist only after a failed publish or when
        # taking over from a leader that died; otherwise the query for them is skipped.
        self._leftovers_possible = True
        self._epoch_checked_at = 0.0
        self._redis_ok = True
        self._leadership_confirmed_at = 0.0
        self._reconcile_interval = reconcile_interval
        self._reconciled_at = 0.0
        # Per department: the stream's shape when its entries were last checked one by
        # one and found complete (no need to check again while it stays the same).
        self._verified: dict[str, tuple[int, ...]] = {}
        self._trim_interval = trim_interval
        self._keep_acked = keep_acked_seconds
        # Where settle_lost_acks goes on from: (department, seq) of the last event checked.
        self._lost_ack_cursor = LOST_ACK_START
        self._trimmed_at = 0.0
        self._trimmed_to: dict[str, int] = {}  # per department: the last MINID applied
        self.on_published: Callable[[], None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                if not await self._leader.try_acquire():
                    await _wait(stop, 2.0)
                    continue
                LEADER.set(1)
                self._leftovers_possible = True
                self._epoch_checked_at = 0.0
                self._trimmed_to.clear()
                self._verified.clear()
                log.info("outbox relay: leading")
                conn = self._leader.conn
                assert conn is not None
                await conn.add_listener("securenow_outbox", self._on_notify)
                backoff = 0.2
                await self._lead(stop, conn)
            except (Unavailable, RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay: %s; retrying in %.1f s", type(exc).__name__, backoff)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                LEADER.set(0)
                await self._leader.release()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _lead(self, stop: asyncio.Event, conn: asyncpg.Connection) -> None:
        while not stop.is_set():
            if conn.is_closed():
                raise Unavailable("lost the relay's leader connection")
            self._wake.clear()
            started = time.monotonic()
            moved = await self.step()
            if moved:
                STEP.observe(time.monotonic() - started)
            if self._redis_ok and time.monotonic() - self._reconciled_at >= self._reconcile_interval:
                self._reconciled_at = time.monotonic()
                try:
                    await self.reconcile()
                except (RedisError, OSError) as exc:
                    log.warning("outbox relay: reconciliation failed (%s); trying again later", type(exc).__name__)
            if self._redis_ok and time.monotonic() - self._trimmed_at >= self._trim_interval:
                self._trimmed_at = time.monotonic()
                try:
                    await self.trim()
                except (RedisError, OSError) as exc:
                    log.warning("outbox relay: trimming failed (%s); trying again later", type(exc).__name__)
            if moved < BATCH:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._idle_poll)
                except TimeoutError:
                    pass

    async def step(self) -> int:
        """One pass; returns how many events were published."""
        leftovers: list[OutboxEvent] = []
        if self._leftovers_possible:
            async with self._db.reader() as uow:
                leftovers = await RelayRepo(uow.conn).sequenced_unpublished(BATCH)
        # Numbering, and the webhook deliveries made by the same statement, need only
        # Postgres: they go on while Redis is down. Leadership is confirmed meanwhile
        # (in parallel: no added latency), so a relay that lost its lock without
        # noticing yet does not publish.
        claimed, _ = await asyncio.gather(self._claim(), self._confirm_leadership())
        # A full batch of leftovers may have cut a department short: nothing numbered
        # after it may reach its stream first (stream ids only grow).
        pending = leftovers if len(leftovers) == BATCH else leftovers + claimed
        try:
            if await self._redis_lost_data():
                await self._rebuild_streams()
            if pending:
                await self._publish(sorted(pending, key=lambda e: (e.department_id or "", e.dept_seq or 0, e.id)))
        except (RedisError, OSError) as exc:
            self._leftovers_possible = True
            self._epoch_checked_at = 0.0  # Redis may come back empty: check first
            if self._redis_ok:
                log.warning("outbox relay: Redis unavailable (%s); publishing waits", type(exc).__name__)
            self._redis_ok = False
            return 0
        except BaseException:
            self._leftovers_possible = True
            raise
        if not self._redis_ok:
            log.info("outbox relay: Redis reachable again")
            self._redis_ok = True
        self._leftovers_possible = len(leftovers) == BATCH
        if not pending:
            return 0
        async with self._db.reader() as uow:  # one statement: its own transaction
            await RelayRepo(uow.conn).mark_published([e.id for e in pending])
        if self.on_published is not None:
            self.on_published()
        return len(pending)

    async def _claim(self) -> list[OutboxEvent]:
        async with self._db.reader() as uow:  # one statement: its own transaction
            return await RelayRepo(uow.conn).claim_new(BATCH)

    async def _confirm_leadership(self) -> None:
        """The advisory lock is held as long as the leader's session lives: a round trip
        on it shows that it still does (a relay whose connection died or hangs, and whose
        lock another relay may hold by now, fails here instead of publishing)."""
        conn = self._leader.conn
        if conn is None:
            return  # step() driven directly, without run()
        if conn.is_closed():
            raise Unavailable("lost the relay's leader connection")
        now = time.monotonic()
        if now - self._leadership_confirmed_at < LEADERSHIP_CONFIRM_INTERVAL:
            return
        await conn.fetchval("SELECT 1", timeout=LEADERSHIP_CHECK_TIMEOUT)
        self._leadership_confirmed_at = now

    async def _redis_lost_data(self) -> bool:
        now = time.monotonic()
        if now - self._epoch_checked_at <= EPOCH_CHECK_INTERVAL:
            return False
        # Redis losing its data is rare: checking a few times a second is enough, as the
        # rebuild republishes everything unacknowledged (including what was published
        # in between).
        self._epoch_checked_at = now
        return not await self._redis.exists(DISPATCH_EPOCH_KEY)

    async def _publish(self, events: list[OutboxEvent]) -> None:
        # MULTI/EXEC: no reader ever sees an entry in a stream before it is in the
        # group's pending list (a hub subscribing in between would miss it: its live
        # cursor starts after the entry while its catch-up reads the pending list).
        async with self._redis.pipeline(transaction=True) as pipe:
            new_groups = []
            streams: dict[Any, Any] = {}
            xadds: dict[int, tuple[str, str]] = {}  # command index -> (stream, entry id)
            for e in events:
                if e.department_id and e.dept_seq is not None:
                    stream = dispatch_stream(e.department_id)
                    if stream not in self._known_groups and stream not in new_groups:
                        pipe.xgroup_create(stream, DISPATCH_GROUP, id="0", mkstream=True)
                        new_groups.append(stream)
                    xadds[len(pipe)] = (stream, event_id(e.dept_seq))
                    pipe.xadd(stream, stream_fields(e), id=event_id(e.dept_seq))
                    streams[stream] = ">"
                marker = active_alert_marker(e)
                if marker is not None:
                    if marker.value is None:
                        pipe.delete(marker.key)
                    else:
                        pipe.set(marker.key, marker.value, xx=marker.existing_only)
                channel = pubsub_channel(e)
                if channel is not None:
                    pipe.publish(channel, json.dumps({"type": e.event_type, **e.payload}, default=str))
            if streams:
                # Into the pending list; also picks up entries an interrupted pass added.
                pipe.xreadgroup(DISPATCH_GROUP, RELAY_CONSUMER, streams)
            results = await pipe.execute(raise_on_error=False)
        rejected: list[tuple[str, str]] = []
        for index, result in enumerate(results):
            if isinstance(result, ResponseError):
                text = str(result)
                if "BUSYGROUP" in text:
                    continue  # the group exists
                if "equal or smaller" in text and index in xadds:
                    rejected.append(xadds[index])  # published by an earlier attempt, or not?
                    continue
                if "NOGROUP" in text:
                    self._known_groups.clear()  # Redis lost the group: create it again
                raise result
            if isinstance(result, Exception):
                raise result
        self._known_groups.update(new_groups)
        if rejected:
            await self._check_rejected(rejected)
        now = time.time()
        for e in events:
            LAG.observe(max(0.0, now - e.created_at.timestamp()))
            PUBLISHED.labels("dispatch" if e.department_id else "pubsub").inc()

    async def _check_rejected(self, rejected: list[tuple[str, str]]) -> None:
        """An XADD refused because the stream already has a greater id is normally the
        repeat of a publish that reached Redis before its pass failed. But a superseded
        leader that did not notice yet may have published the next event first: then
        this one is not in the stream at all. Such entries are left to reconcile(),
        which runs at once and rewrites the stream with them in their place."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, entry_id in rejected:
                pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
            found = await pipe.execute()
        absent = [entry for entry, entries in zip(rejected, found, strict=True) if not entries]
        if absent:
            log.warning(
                "outbox relay: %d events were refused by their streams and are not in them (first %s %s):"
                " another relay published past them; repairing the streams",
                len(absent),
                *absent[0],
            )
            self._reconciled_at = 0.0

    async def reconcile(self) -> int:
        """Compares Postgres with Redis: every published event a department has not
        acknowledged must be in its stream. Redis can lose its last writes and keep the
        epoch (appendfsync everysec and a crash, a failover to a lagging replica), or a
        superseded leader can publish past an event. A department whose stream lost
        something has its stream rewritten from Postgres. Returns how many events were
        missing.

        Cheap when nothing is missing: one grouped query, and three O(1)/O(log n) Redis
        commands per department with unacknowledged events. A stream whose ids run
        without a gap from at or before the oldest such event to at or after the newest
        holds them all (ids are the departments' consecutive sequence numbers). Only a
        stream with gaps (after a rewrite, which leaves out acknowledged events) is
        checked entry by entry, and not again while its shape stays the same."""
        async with self._db.reader() as uow:
            ranges = await RelayRepo(uow.conn).unacked_published_ranges()
        if not ranges:
            self._verified.clear()
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for department, _, _ in ranges:
                stream = dispatch_stream(department)
                pipe.xlen(stream)
                pipe.xrange(stream, count=1)
                pipe.xrevrange(stream, count=1)
            shapes = await pipe.execute()
        missing_total = 0
        checked = set()
        for i, (department, low, high) in enumerate(ranges):
            length, first, last = shapes[3 * i : 3 * i + 3]
            first_seq = (seq_of(first[0][0]) or 0) if first else 0
            last_seq = (seq_of(last[0][0]) or 0) if last else 0
            if first and first_seq <= low and last_seq >= high and length == last_seq - first_seq + 1:
                continue  # gapless and covering every unacknowledged event
            shape = (length, first_seq, last_seq, low, high)
            checked.add(department)
            if self._verified.get(department) == shape:
                continue
            missing = await self._missing_from_stream(department)
            if not missing:
                self._verified[department] = shape
                continue
            log.warning(
                "outbox relay: %d published, unacknowledged events of department %s are missing from Redis"
                " (first %s); rewriting its stream from Postgres",
                len(missing),
                department,
                event_id(missing[0]),
            )
            REPAIRED.inc(len(missing))
            missing_total += len(missing)
            self._verified.pop(department, None)
            await self._rewrite_stream(department, published_only=True)
        for department in set(self._verified) - checked:
            del self._verified[department]
        return missing_total

    async def trim(self) -> int:
        """Drops stream entries that every consumer is done with: XTRIM MINID below each
        department's oldest unacknowledged event, keeping acknowledged ones for
        `keep_acked_seconds` after publication (replicas reading live may still be
        behind). Never an unacknowledged entry. Returns how many entries went."""
        await self.settle_lost_acks()
        async with self._db.reader() as uow:
            points = await RelayRepo(uow.conn).trim_points(self._keep_acked)
        due = [(d, keep_from) for d, keep_from in points if self._trimmed_to.get(d) != keep_from]
        if not due:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for department, keep_from in due:
                pipe.xtrim(dispatch_stream(department), minid=event_id(keep_from), approximate=False)
            removed = await pipe.execute()
        for department, keep_from in due:
            self._trimmed_to[department] = keep_from
        TRIMMED.inc(sum(removed))
        return int(sum(removed))

    async def settle_lost_acks(self, batch: int = LOST_ACK_BATCH) -> int:
        """Records acknowledgements Redis has and PostgreSQL lost. A hub records an XACK
        in PostgreSQL within 0.2 s; a process that dies in between leaves the event
        acknowledged in Redis but not in PostgreSQL, where it would hold back trimming
        forever (and come again after a rebuild). Events unacknowledged in PostgreSQL
        for longer than `keep_acked_seconds` whose entry is in the stream but no longer
        pending in the group were acknowledged (the relay puts every entry it adds into
        the group's pending list in the same MULTI): they are recorded now. Each pass
        checks `batch` events, going on where the previous pass stopped and starting over
        after the last, so a backlog of events still pending (a department offline for
        hours) cannot hide lost acknowledgements behind it. Returns how many."""
        async with self._db.reader() as uow:
            stale = await RelayRepo(uow.conn).old_unacked_published(self._keep_acked, self._lost_ack_cursor, batch)
        if len(stale) < batch:
            self._lost_ack_cursor = LOST_ACK_START
        else:
            self._lost_ack_cursor = (uuid.UUID(stale[-1][0]), stale[-1][1])
        if not stale:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for department, seq in stale:
                stream, entry = dispatch_stream(department), event_id(seq)
                pipe.xrange(stream, min=entry, max=entry)
                pipe.xpending_range(stream, DISPATCH_GROUP, min=entry, max=entry, count=1)
            found = await pipe.execute()
        settled = [
            (department, seq)
            for i, (department, seq) in enumerate(stale)
            if found[2 * i] and not found[2 * i + 1]  # in the stream, pending for nobody
        ]
        if settled:
            async with self._db.unit_of_work() as uow:
                await RelayRepo(uow.conn).mark_acked(settled)
            LOST_ACKS.inc(len(settled))
            log.warning("outbox relay: recorded %d acknowledgements PostgreSQL had missed", len(settled))
        return len(settled)

    async def _missing_from_stream(self, department: str) -> list[int]:
        """The department's published, unacknowledged events its stream does not hold."""
        async with self._db.reader() as uow:
            seqs = await RelayRepo(uow.conn).unacked_published_seqs(department)
        stream = dispatch_stream(department)
        missing: list[int] = []
        for start in range(0, len(seqs), REWRITE_BATCH):
            chunk = seqs[start : start + REWRITE_BATCH]
            async with self._redis.pipeline(transaction=False) as pipe:
                for seq in chunk:
                    pipe.xrange(stream, min=event_id(seq), max=event_id(seq), count=1)
                found = await pipe.execute()
            missing += [seq for seq, entries in zip(chunk, found, strict=True) if not entries]
        return missing

    async def _rewrite_stream(self, department: str, *, published_only: bool) -> list[int]:
        """Replaces a department's stream with its unacknowledged events from Postgres,
        in order, with their ids, in batches; returns their outbox ids. Each batch is a
        MULTI that also reads its entries into the group's pending list (as in _publish),
        and the first one deletes and recreates the stream and group, so a hub never
        sees a stream without its group nor an entry that is not pending yet. A hub
        subscribing between batches catches up on the earlier ones and reads the later
        ones live. The first MULTI also posts a notice on DISPATCH_REWRITES: a hub
        already reading the stream live may be past the events put back (its cursor
        stood after an entry Redis kept), and rewinds to read them. Acknowledgements
        Redis had but Postgres did not yet are lost: those events come again (delivery
        is at least once)."""
        stream = dispatch_stream(department)
        outbox_ids: list[int] = []
        after = 0
        first = True
        while True:
            async with self._db.reader() as uow:
                batch = await RelayRepo(uow.conn).unacked_of_department(
                    department, after, REWRITE_BATCH, published_only=published_only
                )
            async with self._redis.pipeline(transaction=True) as pipe:
                if first:
                    if batch:
                        # First: a blocked XREAD is answered with the first of its keys
                        # that a command touched (Redis 7.0), so the hub reads the notice
                        # before any entry of the new stream (DEL, MKSTREAM touch it).
                        pipe.xadd(
                            DISPATCH_REWRITES,
                            {"department": department, "from_seq": str(batch[0].dept_seq)},
                            maxlen=DISPATCH_REWRITES_MAXLEN,
                            approximate=True,
                        )
                    pipe.delete(stream)
                    pipe.xgroup_create(stream, DISPATCH_GROUP, id="0", mkstream=True)
                for e in batch:
                    assert e.dept_seq is not None
                    pipe.xadd(stream, stream_fields(e), id=event_id(e.dept_seq))
                if batch:
                    pipe.xreadgroup(DISPATCH_GROUP, RELAY_CONSUMER, {stream: ">"})
                await pipe.execute()
            self._known_groups.add(stream)
            first = False
            outbox_ids += [e.id for e in batch]
            if len(batch) < REWRITE_BATCH:
                return outbox_ids
            assert batch[-1].dept_seq is not None
            after = batch[-1].dept_seq

    async def _rebuild_streams(self) -> None:
        """Redis lost the streams (restart without persistence, failover): rebuild them
        from Postgres, in order, with the same ids, department by department and in
        batches, then restore the open-alert markers and mark the epoch (last: a relay
        that dies halfway leaves no epoch, and the next one starts over)."""
        async with self._db.reader() as uow:
            departments = await RelayRepo(uow.conn).departments_with_unacked()
            markers = await RelayRepo(uow.conn).open_alert_markers()
        log.warning(
            "outbox relay: Redis has no dispatch epoch; rebuilding %d streams of unacknowledged events"
            " and %d open-alert markers",
            len(departments),
            len(markers),
        )
        self._known_groups.clear()
        self._verified.clear()
        self._trimmed_to.clear()
        rebuilt: list[int] = []
        for department in departments:
            rebuilt += await self._rewrite_stream(department, published_only=False)
        async with self._redis.pipeline(transaction=True) as pipe:
            for marker in markers:
                pipe.set(*marker)
            pipe.set(DISPATCH_EPOCH_KEY, "1")
            await pipe.execute()
        for start in range(0, len(rebuilt), REWRITE_BATCH):
            async with self._db.reader() as uow:
                await RelayRepo(uow.conn).mark_published(rebuilt[start : start + REWRITE_BATCH])


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
