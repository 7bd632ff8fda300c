"""PostgreSQL pool and the unit of work that services use to own a transaction.

Driver errors never leave this package untranslated: lost connections, timeouts and
shutdowns become `Unavailable` (the caller may retry), constraint violations become
the domain errors the repositories name, and values the database refuses (a NUL in
text, a number beyond bigint) become `InvalidArgument`: the caller's mistake, never
INTERNAL, even where validation missed it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from securenow.server.domain.errors import InvalidArgument, Unavailable
from securenow.server.storage.accounts_repo import AccountsRepo
from securenow.server.storage.agency_repo import AgencyRepo
from securenow.server.storage.analytics_repo import AnalyticsRepo
from securenow.server.storage.audit_repo import AuditRepo
from securenow.server.storage.bookings_repo import BookingsRepo
from securenow.server.storage.idempotency_repo import IdempotencyRepo
from securenow.server.storage.outbox_repo import OutboxRepo
from securenow.server.storage.providers_repo import ProvidersRepo
from securenow.server.storage.rows import Conn
from securenow.server.storage.sos_repo import SosRepo

log = logging.getLogger(__name__)

# Errors that mean "the database is not reachable right now", not "your request is bad".
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,
    ConnectionError,
)


# Errors that mean "a value in the request cannot be stored or compared": the request's
# fault. Validation names the field first; these are the safety net behind it.
_BAD_VALUE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.CharacterNotInRepertoireError,  # NUL in text
    asyncpg.exceptions.UntranslatableCharacterError,  # \u0000 in jsonb
    asyncpg.exceptions.StringDataRightTruncationError,
    asyncpg.exceptions.NumericValueOutOfRangeError,
    asyncpg.exceptions.InvalidTextRepresentationError,
    asyncpg.exceptions.DatetimeFieldOverflowError,
)


def translate_unavailable(exc: BaseException) -> Unavailable | None:
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return Unavailable(f"database unavailable: {type(exc).__name__}")
    return None


def translate_bad_value(exc: BaseException) -> InvalidArgument | None:
    """INVALID_ARGUMENT for a value PostgreSQL refused. The field is unknown here, so the
    violation names the request; the warning says which check is missing (never the
    value itself: it may be personal data)."""
    # asyncpg raises the base DataError itself when it cannot encode an argument (an
    # integer beyond bigint); the server's subclasses of it are listed above.
    if not (isinstance(exc, _BAD_VALUE_ERRORS) or type(exc) is asyncpg.exceptions.DataError):
        return None
    sqlstate = getattr(exc, "sqlstate", None)
    log.warning(
        "the database refused a value that validation let through (%s, sqlstate %s)", type(exc).__name__, sqlstate
    )
    return InvalidArgument.field(
        "request", "holds a value the database cannot store (a control character or an out-of-range number)"
    )


def translate_error(exc: BaseException) -> Unavailable | InvalidArgument | None:
    return translate_unavailable(exc) or translate_bad_value(exc)


async def _keep_session(conn: Conn) -> None:
    """Connection release without the default RESET ALL / UNLISTEN / advisory unlock
    round trip: pooled connections never carry session state here (no LISTEN, no session
    advisory locks, no session SETs), and asyncpg still rolls back an open transaction."""


# Every custom type the queries use. Preparing one statement that mentions them all makes
# asyncpg introspect them in a single query when the connection opens, instead of one
# introspection per statement (and per connection) on the hot paths.
_APP_TYPES = (
    "user_role",
    "user_status",
    "verification_status",
    "provider_type",
    "sos_status",
    "alert_priority",
    "service_type",
    "booking_status",
    "payment_status",
    "incident_type",
    "incident_priority",
    "incident_status",
    "department_status",
    "agency_type",
    "uuid[]",
    "tstzrange",
)


async def _init_connection(conn: Conn) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    columns = ", ".join(f"NULL::{t}" for t in _APP_TYPES)
    await conn.prepare(f"SELECT {columns}")


_AGENCY_READER_SQL = """SELECT set_config('role', 'securenow_agency_reader', true),
                                set_config('securenow.agency_id', $1, true),
                                set_config('securenow.user_id', $2, true)"""


class Database:
    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int, max_size: int, acquire_timeout: float) -> Database:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                reset=_keep_session,
                command_timeout=30,
                max_inactive_connection_lifetime=300,
                server_settings={
                    # Short OLTP statements: JIT compiling one costs more than running it
                    # (a search over many candidate rows spent 280 ms compiling, 10 running).
                    "jit": "off",
                    # The server's transactions are a few statements back to back; one left
                    # open (a stuck task) would hold row locks that escalation and dispatch
                    # wait on. PostgreSQL ends such a session after 10 s idle.
                    "idle_in_transaction_session_timeout": "10s",
                },
            )
        except _UNAVAILABLE_ERRORS as exc:
            raise Unavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        assert pool is not None
        return cls(pool, acquire_timeout)

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self)

    def reader(self) -> UnitOfWork:
        """A unit of work without a transaction, for reads (each statement stands alone;
        BEGIN and COMMIT would double the round trips of a simple lookup)."""
        return UnitOfWork(self, transactional=False)

    def agency_reader(self, agency_id: str, user_id: str | None) -> UnitOfWork:
        """A transaction that reads as the role securenow_agency_reader, so row-level
        security limits alerts, incidents and location trails to this agency's (and to
        alerts `user_id` raised): the second wall behind the services' own checks."""
        return UnitOfWork(self, row_scope=(agency_id, user_id or ""))

    async def close(self) -> None:
        await self.pool.close()


class UnitOfWork:
    """`async with db.unit_of_work() as uow:` one transaction, committed when the block
    ends without an exception. Repositories share its connection. Callbacks added with
    `after_commit` run once the commit succeeded (publishing, cache invalidation)."""

    def __init__(self, db: Database, *, transactional: bool = True, row_scope: tuple[str, str] | None = None) -> None:
        self._db = db
        self._transactional = transactional or row_scope is not None
        self._row_scope = row_scope
        self._conn: PoolConnectionProxy | None = None
        self._tx: Any = None
        self._after_commit: list[Callable[[], Awaitable[None]]] = []
        self._repos: dict[str, Any] = {}

    @property
    def conn(self) -> Conn:
        assert self._conn is not None, "unit of work not entered"
        return self._conn

    async def __aenter__(self) -> UnitOfWork:
        try:
            conn = await self._db.pool.acquire(timeout=self._db.acquire_timeout)
            self._conn = conn
            if self._transactional:
                self._tx = conn.transaction()
                await self._tx.start()
            if self._row_scope is not None:
                # Transaction-local: reverts at COMMIT/ROLLBACK, the pooled connection stays clean.
                await conn.execute(_AGENCY_READER_SQL, *self._row_scope)
        except BaseException as exc:
            # Also on cancellation (a client deadline during BEGIN): never leak the
            # connection, or the pool shrinks and closing it waits forever.
            await self._release()
            if isinstance(exc, _UNAVAILABLE_ERRORS):
                raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._tx is None:
                translated = translate_error(exc) if exc is not None else None
                if translated is not None:
                    raise translated from exc
            elif exc is None:
                try:
                    await self._tx.commit()
                except _UNAVAILABLE_ERRORS as commit_exc:
                    # Outcome unknown: the client retries with its request_id.
                    raise Unavailable("database unavailable during commit") from commit_exc
            else:
                try:
                    await self._tx.rollback()
                except _UNAVAILABLE_ERRORS:
                    pass
                translated = translate_error(exc)
                if translated is not None:
                    raise translated from exc
        finally:
            await self._release()
        if exc is None:
            for callback in self._after_commit:
                try:
                    await callback()
                except Exception:
                    log.exception("after-commit action failed")

    async def _release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await self._db.pool.release(conn)
            except Exception:
                log.warning("could not release a database connection", exc_info=True)

    def after_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._after_commit.append(callback)

    def _repo(self, name: str, factory: Callable[[Conn], Any]) -> Any:
        repo = self._repos.get(name)
        if repo is None:
            repo = self._repos[name] = factory(self.conn)
        return repo

    @property
    def accounts(self) -> AccountsRepo:
        return self._repo("accounts", AccountsRepo)  # type: ignore[no-any-return]

    @property
    def audit(self) -> AuditRepo:
        return self._repo("audit", AuditRepo)  # type: ignore[no-any-return]

    @property
    def idempotency(self) -> IdempotencyRepo:
        return self._repo("idempotency", IdempotencyRepo)  # type: ignore[no-any-return]

    @property
    def providers(self) -> ProvidersRepo:
        return self._repo("providers", ProvidersRepo)  # type: ignore[no-any-return]

    @property
    def bookings(self) -> BookingsRepo:
        return self._repo("bookings", BookingsRepo)  # type: ignore[no-any-return]

    @property
    def agency(self) -> AgencyRepo:
        return self._repo("agency", AgencyRepo)  # type: ignore[no-any-return]

    @property
    def sos(self) -> SosRepo:
        return self._repo("sos", SosRepo)  # type: ignore[no-any-return]

    @property
    def outbox(self) -> OutboxRepo:
        return self._repo("outbox", OutboxRepo)  # type: ignore[no-any-return]

    @property
    def analytics(self) -> AnalyticsRepo:
        return self._repo("analytics", AnalyticsRepo)  # type: ignore[no-any-return]
