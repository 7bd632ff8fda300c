"""The audit log: every mutation recorded (also refused ones), append-only, and sealed
into a hash chain whose tampering is detected."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from securenow.v1 import auth_pb2, users_pb2
from tests.helpers import Api, expect_error


async def test_mutations_and_refusals_are_audited_and_the_chain_verifies(api: Api, db_conn: asyncpg.Connection) -> None:
    account = await api.sign_up()
    await api.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id="me", first_name="Zed"), update_mask={"paths": ["first_name"]}
        ),
        metadata=account.md,
    )
    await expect_error(
        api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=account.id), metadata=account.md),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password="Wrong-pass-123")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    rows = await db_conn.fetch("SELECT actor_id, action, resource_id, outcome FROM audit_log ORDER BY id")
    entries = [(r["action"], r["outcome"]) for r in rows]
    assert ("auth.sign_up", "OK") in entries
    assert ("user.update", "OK") in entries
    assert ("rpc:/securenow.v1.UserService/SuspendUser", "PERMISSION_DENIED") in entries
    assert ("rpc:/securenow.v1.AuthService/SignIn", "UNAUTHENTICATED") in entries
    update = next(r for r in rows if r["action"] == "user.update")
    assert update["actor_id"] == account.id
    assert update["resource_id"] == account.id

    sealed, broken = await api.app.audit.seal_and_verify()
    assert broken is None
    assert await db_conn.fetchval("SELECT count(*) FROM audit_log WHERE chain_seq IS NULL") == 0
    assert sealed >= 0


async def test_audit_rows_cannot_be_changed_or_deleted(api: Api, db_conn: asyncpg.Connection) -> None:
    await api.sign_up()
    await api.app.audit.seal_and_verify()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db_conn.execute("UPDATE audit_log SET outcome = 'OK' WHERE id = (SELECT min(id) FROM audit_log)")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db_conn.execute("DELETE FROM audit_log")


async def test_tampering_with_a_sealed_entry_is_detected(api: Api, db_conn: asyncpg.Connection) -> None:
    for _ in range(3):
        await api.sign_up()
    _, broken = await api.app.audit.seal_and_verify()
    assert broken is None
    target = await db_conn.fetchval("SELECT chain_seq FROM audit_log ORDER BY chain_seq OFFSET 1 LIMIT 1")
    # Someone with table-owner rights bypasses the guard and rewrites history.
    async with db_conn.transaction():
        await db_conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await db_conn.execute("UPDATE audit_log SET actor_id = 'someone-else' WHERE chain_seq = $1", target)
        await db_conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    _, broken = await api.app.audit.seal_and_verify()
    assert broken == target
