"""The Elasticsearch indexer's feeds, against the real PostgreSQL: what changed is
indexed, a transaction that commits late is still caught by the settled pass, and a
restarted indexer resumes from its stored watermark. Elasticsearch itself cannot run
here, so the documents go to a recording stand-in with the same interface
(tests/test_search_elasticsearch.py runs the real thing when a cluster is available)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from google.protobuf import field_mask_pb2

from securenow.server.bootstrap import App
from securenow.server.storage.search_elastic import ElasticSearch
from securenow.server.workers.leader import AdvisoryLeader
from securenow.server.workers.search_indexer import SearchIndexer
from securenow.v1 import providers_pb2, users_pb2
from tests.conftest import DATABASE_URL
from tests.dispatch_helpers import SF, register_department
from tests.dispatch_helpers import raise_sos as raise_alert
from tests.helpers import Api, wait_for


class RecordingIndex(ElasticSearch):
    """Keeps the newest version of each document, as external versioning does."""

    def __init__(self, *, existing: bool = False) -> None:
        super().__init__("http://127.0.0.1:9", index_prefix="test-")
        self.existing = existing
        self.docs: dict[str, dict[str, dict[str, Any]]] = {self.providers_index: {}, self.incidents_index: {}}
        self.writes = 0

    async def ensure_indices(self) -> list[str]:
        if self.existing:
            return []
        self.existing = True
        return ["providers", "incidents"]

    async def index(self, index: str, docs: list[dict[str, Any]]) -> int:
        for doc in docs:
            version = doc.pop("_version")
            stored = self.docs[index].get(doc["id"])
            if stored is None or stored["_version"] <= version:
                self.docs[index][doc["id"]] = {**doc, "_version": version}
            self.writes += 1
        return len(docs)


async def test_changes_reach_the_index_and_late_commits_are_caught(
    api: Api, app: App, db_conn: asyncpg.Connection
) -> None:
    sink = RecordingIndex()
    indexer = SearchIndexer(app.db, sink, DATABASE_URL, settle_seconds=1.0)
    admin = await api.admin()
    owner, guards = await api.verified_provider(admin, company="Feed Guards")
    await indexer.start()
    await indexer.step()
    doc = sink.docs[sink.providers_index][guards.id]
    assert doc["company_name"] == "Feed Guards"
    assert doc["verified"] is True

    await api.providers.UpdateProvider(
        providers_pb2.UpdateProviderRequest(
            provider=providers_pb2.Provider(id=guards.id, tags=["k9"]),
            update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
        ),
        metadata=owner.md,
    )
    await indexer.step()
    newer = sink.docs[sink.providers_index][guards.id]
    assert newer["tags"] == ["k9"]
    assert newer["_version"] > doc["_version"]
    assert newer["owner_active"] is True

    # Suspending the owner withdraws the company from search (the index's own filter,
    # so its totals count only what is shown); reinstating brings it back.
    await api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=owner.id, reason="fraud"), metadata=admin.md)
    await indexer.step()
    assert sink.docs[sink.providers_index][guards.id]["owner_active"] is False
    await api.users.ReinstateUser(users_pb2.ReinstateUserRequest(user_id=owner.id), metadata=admin.md)
    await indexer.step()
    assert sink.docs[sink.providers_index][guards.id]["owner_active"] is True

    # An incident's document follows its alert and its incident.
    dept = await register_department(api, admin, SF)
    person = await api.sign_up()
    alert = await raise_alert(api, person, SF, description="glass breaking next door")
    await indexer.step()
    (incident,) = sink.docs[sink.incidents_index].values()
    assert incident["department_id"] == dept.id
    assert incident["description"] == "glass breaking next door"
    assert incident["status"] == "reported"

    # A transaction stamps updated_at when it starts and commits later, after the
    # fresh cursor has moved past that time.
    late = await asyncpg.connect(DATABASE_URL)
    try:
        tx = late.transaction()
        await tx.start()
        await late.execute(
            "UPDATE providers SET description = 'late words', updated_at = now() WHERE id = $1", guards.id
        )
        _, other = await api.verified_provider(admin, company="Quick Guards")
        await indexer.step()
        assert other.id in sink.docs[sink.providers_index]
        await tx.commit()
    finally:
        await late.close()

    async def caught() -> bool:
        await indexer.step()
        return bool(sink.docs[sink.providers_index][guards.id]["description"] == "late words")

    # The fresh pass has moved past its updated_at; the settled pass indexes it once
    # the row is settle_seconds old (without that pass it would never be).
    await wait_for(caught, within=10, interval=0.1, what="the late commit to be indexed")
    assert alert.id  # the alert above stays indexed through all of this
    assert len(sink.docs[sink.incidents_index]) == 1


async def test_a_restarted_indexer_resumes_from_its_watermark(api: Api, app: App) -> None:
    admin = await api.admin()
    await api.verified_provider(admin, company="Before Restart")
    first = RecordingIndex()
    indexer = SearchIndexer(app.db, first, DATABASE_URL, settle_seconds=0.0)
    await indexer.start()
    await indexer.step()
    assert [d["company_name"] for d in first.docs[first.providers_index].values()] == ["Before Restart"]

    _, after = await api.verified_provider(admin, company="After Restart")
    # The index exists already: no rebuild, only what changed since the stored watermark.
    second = RecordingIndex(existing=True)
    again = SearchIndexer(app.db, second, DATABASE_URL, settle_seconds=0.0)
    await again.start()
    await again.step()
    assert [d["company_name"] for d in second.docs[second.providers_index].values()] == ["After Restart"]
    assert after.id in second.docs[second.providers_index]

    # A missing index is rebuilt from the beginning of every feed.
    rebuilt = RecordingIndex()
    fresh = SearchIndexer(app.db, rebuilt, DATABASE_URL, settle_seconds=0.0)
    await fresh.start()
    await fresh.step()
    assert sorted(d["company_name"] for d in rebuilt.docs[rebuilt.providers_index].values()) == [
        "After Restart",
        "Before Restart",
    ]


async def test_an_unreachable_cluster_is_retried_and_the_lead_let_go(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    down = ElasticSearch("http://127.0.0.1:9", index_prefix="test-")  # nothing listens there
    indexer = SearchIndexer(app.db, down, DATABASE_URL, interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(indexer.run(stop))
    try:

        async def complained() -> bool:
            return any("search indexer" in r.getMessage() for r in caplog.records)

        await wait_for(complained, within=10, what="the indexer to report the unreachable cluster")
        # It let go of the lead: another replica's indexer can take it.
        other = AdvisoryLeader(DATABASE_URL, "search-indexer")

        async def acquired() -> bool:
            return await other.try_acquire()

        await wait_for(acquired, within=10, what="the indexer lead to be free")
        await other.release()
        assert not task.done()  # still running, backing off
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await down.close()
