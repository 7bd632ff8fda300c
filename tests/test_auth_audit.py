"""Authentication and accounts seen by an attacker and a demanding user: throttling
that counts an account once whatever identifier is tried, passwords and e-mails in
any Unicode form, the last admin, streams of a demoted admin, refresh races,
emergency contacts and KYC values, session limits."""

from __future__ import annotations

import asyncio
import unicodedata
import uuid

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from securenow.server.domain.accounts import MAX_SESSIONS_PER_USER
from securenow.v1 import auth_pb2, common_pb2, users_pb2
from tests.dispatch_helpers import SF, raise_sos, register_department
from tests.helpers import PASSWORD, Account, Api, error_details, expect_error, unique_phone, wait_for
from tests.test_stream_credentials import ended_with, open_watch
from tests.test_users import KYC, expect_invalid, get_user, submit_kyc, update_me

WRONG = "Wrong-pass-1"


def me_md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def signed_in(api: Api, email: str, password: str = PASSWORD) -> Account:
    resp = await api.auth.SignIn(auth_pb2.SignInRequest(email=email, password=password))
    return Account(resp.user, resp.access_token, resp.refresh_token)


# Sign-in throttling -------------------------------------------------------------------


async def test_the_per_account_sign_in_limit_counts_email_and_phone_together(api: Api) -> None:
    """Alternating the account's e-mail and phone must not double the guesses it allows."""
    account = await api.sign_up()
    limit = api.app.settings.sign_in_attempts_per_minute
    for i in range(limit):
        who = {"email": account.user.email} if i % 2 else {"phone": account.user.phone}
        await expect_error(
            api.auth.SignIn(auth_pb2.SignInRequest(password=WRONG, **who)),
            grpc.StatusCode.UNAUTHENTICATED,
            "BAD_CREDENTIALS",
        )
    for who in ({"phone": account.user.phone}, {"email": account.user.email}):
        await expect_error(
            api.auth.SignIn(auth_pb2.SignInRequest(password=PASSWORD, **who)), grpc.StatusCode.RESOURCE_EXHAUSTED
        )


async def test_throttled_sign_ins_cost_no_audit_write_failed_ones_are_audited(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    """A guessing flood is refused by the limit without a database write per request
    (the refusals are counted in securenow_rate_limited_total and logged); each guess
    that reached the password check is audited."""
    account = await api.sign_up()
    limit = api.app.settings.sign_in_attempts_per_minute

    async def audited(outcome: str) -> int:
        return int(
            await db_conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE action = $1 AND outcome = $2 AND details->>'reason' IS NOT NULL"
                " AND occurred_at > now() - interval '5 minutes'",
                "rpc:/securenow.v1.AuthService/SignIn",
                outcome,
            )
        )

    failed_before, throttled_before = await audited("UNAUTHENTICATED"), await audited("RESOURCE_EXHAUSTED")
    for _ in range(limit):
        await expect_error(
            api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password=WRONG)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    for _ in range(5):
        await expect_error(
            api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password=WRONG)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    assert await audited("UNAUTHENTICATED") == failed_before + limit
    assert await audited("RESOURCE_EXHAUSTED") == throttled_before


# Unicode forms ---------------------------------------------------------------------------


async def test_a_password_works_in_any_unicode_form(api: Api) -> None:
    """One keyboard sends "é" as one code point, another as "e" + combining accent, a
    third full-width letters: the same password to the person typing it."""
    composed = "Café-Crème-2024"
    account = await api.sign_up(password=unicodedata.normalize("NFD", composed))
    full_width = "\uff23\uff41\uff46é-Crème-\uff12\uff10\uff12\uff14"  # "Caf" and "2024" full-width
    for typed in (composed, unicodedata.normalize("NFD", composed), full_width):
        resp = await api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password=typed))
        assert resp.user.id == account.id
    # Its length is the length as hashed, at sign-up and at sign-in alike.
    long_decomposed = unicodedata.normalize("NFD", "é" * 200) + "-Aa1"  # 404 code points, 204 composed
    other = await api.sign_up(password=long_decomposed)
    assert (await signed_in(api, other.user.email, long_decomposed)).id == other.id


async def test_an_email_in_another_unicode_form_is_the_same_account(api: Api) -> None:
    composed = f"josé-{uuid.uuid4().hex[:8]}@example.com"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    account = await api.sign_up(email=decomposed)
    assert account.user.email == composed  # stored in one (composed) form
    taken = await expect_error(api.sign_up(email=composed), grpc.StatusCode.ALREADY_EXISTS, "ACCOUNT_EXISTS")
    assert taken.metadata == {"field": "email"}
    for typed in (composed, decomposed):
        assert (await signed_in(api, typed)).id == account.id


async def test_an_email_with_invisible_direction_controls_is_refused(api: Api) -> None:
    """U+202E shows "moc.elpmaxe@..." reversed on an admin's screen: not an address."""
    err = await expect_error(api.sign_up(email="admin\u202e@example.com"), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(err.fields) == {"email"}


# Refresh ----------------------------------------------------------------------------------


async def test_two_refreshes_with_one_token_at_once_are_reuse(api: Api) -> None:
    """Decided: a refresh token is spent once. Two presentations of it at once (a copy,
    or a client that does not serialise its refreshes) are reuse: one exchange wins,
    the other is refused REFRESH_TOKEN_REUSED and the session ends, with the winner's
    tokens. Never two live successors."""
    account = await api.sign_up()
    request = auth_pb2.RefreshTokenRequest(refresh_token=account.refresh_token)
    answers = await asyncio.gather(*(api.auth.RefreshToken(request) for _ in range(2)), return_exceptions=True)
    won = [a for a in answers if isinstance(a, auth_pb2.RefreshTokenResponse)]
    lost = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert (len(won), len(lost)) == (1, 1), answers
    assert (lost[0].code(), error_details(lost[0]).reason) == (grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=won[0].refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_ENDED",
    )
    await expect_error(
        api.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=me_md(won[0].access_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_ENDED",
    )


async def test_refresh_token_reuse_is_audited_with_the_accounts_role(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    await api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=admin.refresh_token))
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=admin.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "REFRESH_TOKEN_REUSED",
    )
    rows = await db_conn.fetch("SELECT actor_id, actor_role FROM audit_log WHERE action = 'auth.refresh_token_reuse'")
    assert [(r["actor_id"], r["actor_role"]) for r in rows] == [(admin.id, "admin")]


# Sessions ---------------------------------------------------------------------------------


async def test_signing_in_beyond_the_session_limit_ends_the_least_recently_used_session(api: Api) -> None:
    account = await api.sign_up()
    sessions = [account] + [await signed_in(api, account.user.email) for _ in range(MAX_SESSIONS_PER_USER - 1)]
    # The first device is still in use (it refreshed): the second is now the idle one.
    fresh = await api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=account.refresh_token))
    sessions[0] = Account(account.user, fresh.access_token, fresh.refresh_token)
    sessions.append(await signed_in(api, account.user.email))

    idle = sessions.pop(1)
    await expect_error(
        api.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=idle.md),
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_ENDED",
    )
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=idle.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_ENDED",
    )
    for kept in sessions:
        assert (await get_user(api, kept)).id == account.id


async def test_a_sign_in_racing_a_suspension_leaves_no_session_behind(api: Api, db_conn: asyncpg.Connection) -> None:
    """The suspension commits while the sign-in checks the password (argon2 takes
    tens of milliseconds): the session it then opens must not escape the suspension,
    to come back to life when the account is reinstated."""
    admin = await api.admin()
    account = await api.sign_up()
    async with db_conn.transaction():
        # The suspension holds the account's row, as SuspendUser does, while the sign-in runs.
        await db_conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", account.id)
        sign_in = asyncio.ensure_future(
            api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password=PASSWORD))
        )
        await wait_for(
            lambda: db_conn.fetchval(
                """SELECT count(*) FROM pg_locks w JOIN pg_locks mine ON mine.transactionid = w.transactionid
                   WHERE NOT w.granted AND mine.granted AND mine.pid = pg_backend_pid()"""
            ),
            what="the sign-in to wait for the account's row",
        )
        await db_conn.execute("UPDATE users SET status = 'suspended' WHERE id = $1", account.id)
        await db_conn.execute(
            "UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", account.id
        )
    await expect_error(sign_in, grpc.StatusCode.PERMISSION_DENIED, "ACCOUNT_SUSPENDED")

    await api.users.ReinstateUser(users_pb2.ReinstateUserRequest(user_id=account.id), metadata=admin.md)
    live = await db_conn.fetchval(
        "SELECT count(*) FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL", account.id
    )
    assert live == 0


# Admins --------------------------------------------------------------------------------------


async def test_the_last_admin_cannot_delete_their_account(api: Api) -> None:
    admin = await api.admin()
    await expect_error(
        api.users.DeleteUser(users_pb2.DeleteUserRequest(user_id="me"), metadata=admin.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "LAST_ADMIN",
    )
    assert (await get_user(api, admin)).status == users_pb2.USER_STATUS_ACTIVE
    # With another admin, leaving is fine; that one is then the last.
    other = await api.admin()
    deleted = await api.users.DeleteUser(users_pb2.DeleteUserRequest(user_id="me"), metadata=admin.md)
    assert deleted.user.status == users_pb2.USER_STATUS_DELETED
    await expect_error(
        api.users.DeleteUser(users_pb2.DeleteUserRequest(user_id="me"), metadata=other.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "LAST_ADMIN",
    )


async def test_two_admins_suspending_each_other_at_once_leave_one_admin(api: Api, db_conn: asyncpg.Connection) -> None:
    for _ in range(5):
        a, b = await api.admin(), await api.admin()
        await asyncio.gather(
            api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=b.id), metadata=a.md),
            api.users.SetUserRole(
                users_pb2.SetUserRoleRequest(user_id=a.id, role=users_pb2.USER_ROLE_USER), metadata=b.md
            ),
            return_exceptions=True,
        )
        active = await db_conn.fetchval(
            "SELECT count(*) FROM users WHERE role = 'admin' AND status = 'active' AND id = ANY($1::uuid[])",
            [uuid.UUID(a.id), uuid.UUID(b.id)],
        )
        assert active == 1
        await db_conn.execute("UPDATE users SET status = 'suspended' WHERE id = ANY($1::uuid[])", [a.id, b.id])


async def test_an_admin_cannot_verify_their_own_kyc(api: Api) -> None:
    admin = await api.admin()
    await submit_kyc(api, admin)
    await expect_error(
        api.users.VerifyUser(
            users_pb2.VerifyUserRequest(user_id=admin.id, decision=common_pb2.VERIFICATION_STATUS_VERIFIED),
            metadata=admin.md,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SELF_VERIFY",
    )
    assert (await get_user(api, admin)).verification_status == common_pb2.VERIFICATION_STATUS_PENDING


async def test_a_demoted_admin_stops_watching_someone_elses_alert(api: Api) -> None:
    """An admin watches any alert; once no longer an admin, the open stream must not
    keep showing the emergency of someone they may no longer see."""
    admin = await api.admin()
    watcher = await api.admin()
    await register_department(api, admin, SF)
    alert = await raise_sos(api, await api.sign_up(), SF)
    watch = await open_watch(api, alert.id, watcher.md)

    await api.users.SetUserRole(
        users_pb2.SetUserRoleRequest(user_id=watcher.id, role=users_pb2.USER_ROLE_USER), metadata=admin.md
    )

    assert await ended_with(watch) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_CHANGED")


# Profile values ------------------------------------------------------------------------------


async def test_emergency_contacts_refuse_duplicates_and_the_users_own_phone(api: Api) -> None:
    """The person in danger is not their own emergency contact, and one number twice is
    one contact told twice."""
    account = await api.sign_up()
    sis = unique_phone()
    err = await expect_invalid(
        update_me(
            api,
            account,
            users_pb2.User(
                emergency_contacts=[
                    users_pb2.EmergencyContact(name="Sis", phone=sis),
                    users_pb2.EmergencyContact(name="Sister", phone=f"{sis[:5]} {sis[5:]}"),
                    users_pb2.EmergencyContact(name="Me", phone=account.user.phone),
                ]
            ),
            "emergency_contacts",
        )
    )
    assert set(err.fields) == {"user.emergency_contacts[1].phone", "user.emergency_contacts[2].phone"}
    assert list((await get_user(api, account)).emergency_contacts) == []

    await update_me(
        api,
        account,
        users_pb2.User(emergency_contacts=[users_pb2.EmergencyContact(name="Sis", phone=sis)]),
        "emergency_contacts",
    )
    # Taking a contact's number as one's own phone makes the same mistake.
    err = await expect_invalid(update_me(api, account, users_pb2.User(phone=sis), "phone"))
    assert set(err.fields) == {"user.phone"}
    # Both changed together are checked together: fine when they no longer collide.
    new_phone = unique_phone()
    moved = await update_me(
        api,
        account,
        users_pb2.User(phone=sis, emergency_contacts=[users_pb2.EmergencyContact(name="Brother", phone=new_phone)]),
        "phone",
        "emergency_contacts",
    )
    assert moved.phone == sis


async def test_kyc_single_line_values_refuse_line_breaks(api: Api) -> None:
    account = await api.sign_up()
    kyc = users_pb2.KycData()
    kyc.CopyFrom(KYC)
    kyc.document_number = "X123\n45678"
    kyc.full_legal_name = "Maya\tLin"
    kyc.address = "1 Main St\nSpringfield"  # an address may span lines
    err = await expect_invalid(submit_kyc(api, account, kyc))
    assert set(err.fields) == {"kyc.document_number", "kyc.full_legal_name"}
    assert not (await get_user(api, account)).kyc_submitted


async def test_a_kyc_decision_names_the_documents_it_reviewed(api: Api) -> None:
    """An admin reads the documents, the user submits others meanwhile: a decision
    carrying the reviewed submit_time is refused and changes nothing; the same decision
    on the documents now there goes through."""
    admin, person = await api.admin(), await api.sign_up()
    await submit_kyc(api, person)
    read = await api.users.GetKyc(users_pb2.GetKycRequest(user_id=person.id), metadata=admin.md)
    other = users_pb2.KycData()
    other.CopyFrom(KYC)
    other.document_number = "Y98765432"
    await submit_kyc(api, person, other)

    def decision(submit_time: timestamp_pb2.Timestamp) -> users_pb2.VerifyUserRequest:
        return users_pb2.VerifyUserRequest(
            user_id=person.id, decision=common_pb2.VERIFICATION_STATUS_VERIFIED, kyc_submit_time=submit_time
        )

    stale = await expect_error(
        api.users.VerifyUser(decision(read.submit_time), metadata=admin.md), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert stale.reason == "KYC_CHANGED"
    assert (await get_user(api, person, person.id)).verification_status == common_pb2.VERIFICATION_STATUS_PENDING

    again = await api.users.GetKyc(users_pb2.GetKycRequest(user_id=person.id), metadata=admin.md)
    assert again.kyc.document_number == other.document_number
    verified = await api.users.VerifyUser(decision(again.submit_time), metadata=admin.md)
    assert verified.user.verification_status == common_pb2.VERIFICATION_STATUS_VERIFIED
