"""Keeps Elasticsearch current with PostgreSQL (only when Elasticsearch is configured;
one leader across replicas).

Each feed (providers, incidents, alerts) is followed by `updated_at` in two passes:
- *fresh*: rows changed after the last one seen, indexed within about a second;
- *settled*: rows changed up to SETTLE_SECONDS ago, indexed again once. A transaction
  that took `now()` early but committed late can land behind the fresh cursor; by the
  time it is SETTLE_SECONDS old it has committed (statements time out after 30 s), so
  the settled pass catches it. Only the settled watermark is stored (every 10 s): after
  a restart the last SETTLE_SECONDS and a little more are indexed again, which is
  harmless (documents carry their row's `updated_at` as an external version).

A missing index is created and built from the beginning. While Elasticsearch is
unreachable nothing advances; searches fall back to PostgreSQL meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from elasticsearch import ApiError, TransportError
from prometheus_client import Counter, Gauge

from securenow.server.domain.errors import Unavailable
from securenow.server.storage.postgres import Database
from securenow.server.storage.search_elastic import ElasticSearch
from securenow.server.storage.search_feed import FEEDS, LAST_ID, START, Cursor, Feed, SearchFeedRepo
from securenow.server.workers.leader import AdvisoryLeader

log = logging.getLogger(__name__)

SETTLE_SECONDS = 60.0
BATCH = 500
MAX_BACKOFF_SECONDS = 60.0
STORE_EVERY = timedelta(seconds=10)
INDEXED = Counter("securenow_search_documents_indexed_total", "Documents written to Elasticsearch.", ["index"])
LAG = Gauge("securenow_search_settled_lag_seconds", "How far behind now each feed's settled watermark is.", ["feed"])


class SearchIndexer:
    def __init__(
        self,
        db: Database,
        elastic: ElasticSearch,
        dsn: str,
        *,
        interval: float = 1.0,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self._db = db
        self._elastic = elastic
        self._leader = AdvisoryLeader(dsn, "search-indexer")
        self._interval = interval
        self._settle = timedelta(seconds=settle_seconds)
        self._fresh: dict[str, Cursor] = {}
        self._settled: dict[str, Cursor] = {}
        self._stored: dict[str, Cursor] = {}  # the settled watermarks as last written

    async def run(self, stop: asyncio.Event) -> None:
        leading = False
        pause = self._interval
        while not stop.is_set():
            try:
                if not leading:
                    leading = await self._leader.try_acquire()
                    if leading:
                        await self.start()
                if leading:
                    await self.step()
                pause = self._interval
            except Exception as exc:
                # Elasticsearch or PostgreSQL unreachable (or a bug): let go of the lead
                # so another replica may try, and back off up to a minute.
                pause = min(max(pause * 2, 1.0), MAX_BACKOFF_SECONDS)
                if isinstance(exc, (TransportError, ApiError, Unavailable, OSError)):
                    log.warning("search indexer: %s; retrying in %.0f s", exc, pause)
                else:
                    log.exception("search indexer failed; retrying in %.0f s", pause)
                await self._leader.release()
                leading = False
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
        await self._leader.release()

    async def start(self) -> None:
        """Creates missing indices and maps new fields (and rebuilds those indices),
        then resumes each feed from its settled watermark."""
        rebuild = await self._elastic.ensure_indices()
        async with self._db.unit_of_work() as uow:
            repo = SearchFeedRepo(uow.conn)
            for kind in rebuild:
                await repo.reset(kind)
            settled = await repo.settled()
        self._settled = {f.name: settled.get(f.name, START) for f in FEEDS}
        self._stored = dict(self._settled)
        self._fresh = dict(self._settled)
        if rebuild:
            log.info("search indexer: new or remapped %s; building from PostgreSQL", ", ".join(rebuild))

    async def step(self) -> int:
        """One pass over every feed; returns the number of documents written."""
        written = 0
        async with self._db.reader() as uow:
            now = await SearchFeedRepo(uow.conn).now()
        settle_to = now - self._settle
        for feed in FEEDS:
            settled = self._settled[feed.name]
            if settled.at < settle_to:
                end, n = await self._index(feed, settled, settle_to)
                written += n
                self._settled[feed.name] = end
                if end.at - self._stored[feed.name].at >= STORE_EVERY:
                    # Stored now and then, not every second: after a restart the
                    # stretch since is only indexed again.
                    async with self._db.unit_of_work() as uow:
                        await SearchFeedRepo(uow.conn).save_settled(feed.name, end)
                    self._stored[feed.name] = end
            fresh = max(self._fresh[feed.name], self._settled[feed.name], key=lambda c: (c.at, c.id))
            self._fresh[feed.name], n = await self._index(feed, fresh, now)
            written += n
            LAG.labels(feed.name).set(max((now - self._settled[feed.name].at).total_seconds(), 0.0))
        return written

    async def _index(self, feed: Feed, after: Cursor, upto: datetime) -> tuple[Cursor, int]:
        written = 0
        index = self._elastic.index_name(feed.index)
        while True:
            async with self._db.reader() as uow:
                repo = SearchFeedRepo(uow.conn)
                changed = await repo.changed(feed, after, upto, BATCH)
                docs = await repo.documents(feed, [c.id for c in changed]) if changed else []
            if docs:
                written += await self._elastic.index(index, docs)
                INDEXED.labels(feed.index).inc(len(docs))
            if len(changed) < BATCH:
                # Everything up to `upto` is done: resume after it (not after the last
                # row, or an empty stretch would be scanned again and again).
                return Cursor(upto, LAST_ID), written
            after = changed[-1]
