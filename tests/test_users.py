"""UserService: profiles, emergency contacts, KYC (encrypted at rest, audited reads) and
user administration (listing, suspension, verification, roles, deletion)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2

from securenow.server.domain.accounts import Principal, PrincipalKind
from securenow.server.domain.enums import Role, VerificationStatus
from securenow.server.domain.errors import PermissionDenied
from securenow.v1 import auth_pb2, common_pb2, providers_pb2, sos_pb2, users_pb2
from tests.dispatch_helpers import location, raise_sos
from tests.helpers import PASSWORD, Account, Api, ErrorDetails, expect_error, unique_phone
from tests.test_bookings import (
    CANCELLED,
    IN_PROGRESS,
    PAID,
    PAY_PENDING,
    PENDING,
    REFUNDED,
    audit_actions,
    book,
    booking_message,
    cancel,
    confirm,
    get,
    hour,
    pay,
    soon,
    start,
    subscribed,
)
from tests.test_location_order import share

NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"
KYC = users_pb2.KycData(
    document_type="passport",
    document_number="X12345678",
    full_legal_name="Maya Lin",
    date_of_birth="1990-04-01",
    issuing_country="us",
    address="1 Main St, Springfield",
)


def me() -> users_pb2.GetUserRequest:
    return users_pb2.GetUserRequest(user_id="me")


async def expect_invalid(call: Awaitable[Any], *fields: str) -> ErrorDetails:
    """INVALID_ARGUMENT naming (at least) `fields` in its BadRequest details."""
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(fields) <= set(err.fields), f"expected violations of {fields}, got {err.fields}"
    return err


async def get_user(api: Api, caller: Account, user_id: str = "me") -> users_pb2.User:
    return (await api.users.GetUser(users_pb2.GetUserRequest(user_id=user_id), metadata=caller.md)).user


async def update_me(api: Api, caller: Account, user: users_pb2.User, *paths: str) -> users_pb2.User:
    req = users_pb2.UpdateUserRequest(user=user, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))
    return (await api.users.UpdateUser(req, metadata=caller.md)).user


async def submit_kyc(api: Api, caller: Account, kyc: users_pb2.KycData = KYC) -> users_pb2.User:
    return (await api.users.SubmitKyc(users_pb2.SubmitKycRequest(kyc=kyc), metadata=caller.md)).user


async def sign_in(api: Api, account: Account) -> auth_pb2.SignInResponse:
    return await api.auth.SignIn(auth_pb2.SignInRequest(email=account.user.email, password=PASSWORD))


async def audit_rows(db_conn: asyncpg.Connection, action: str, resource_id: str) -> list[asyncpg.Record]:
    return await db_conn.fetch(
        "SELECT actor_id, action, resource_id FROM audit_log WHERE action = $1 AND resource_id = $2 ORDER BY id",
        action,
        resource_id,
    )


async def list_all_users(api: Api, admin: Account, page_size: int, **filters: int) -> list[list[str]]:
    """Walks every page; returns the ids per page."""
    pages: list[list[str]] = []
    token = ""
    while True:
        resp = await api.users.ListUsers(
            users_pb2.ListUsersRequest(page_size=page_size, page_token=token, **filters), metadata=admin.md
        )
        pages.append([u.id for u in resp.users])
        token = resp.next_page_token
        if not token:
            return pages
        assert len(pages) < 50, "paging does not end"


# Reading profiles -------------------------------------------------------------------


async def test_get_user_me_and_by_id(api: Api) -> None:
    account = await api.sign_up(first_name="Maya", last_name="Lin")
    by_me = await get_user(api, account)
    by_id = await get_user(api, account, account.id)
    assert by_me == by_id
    assert by_me.id == account.id
    assert by_me.email == account.user.email
    assert (by_me.first_name, by_me.last_name) == ("Maya", "Lin")
    assert by_me.role == users_pb2.USER_ROLE_USER
    assert by_me.status == users_pb2.USER_STATUS_ACTIVE
    assert not by_me.kyc_submitted
    assert by_me.create_time.seconds > 0


async def test_another_users_profile_is_not_found(api: Api) -> None:
    alice = await api.sign_up()
    bob = await api.sign_up()
    err = await expect_error(
        api.users.GetUser(users_pb2.GetUserRequest(user_id=bob.id), metadata=alice.md),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    assert bob.user.email not in err.message
    # Same answer as for an id that does not exist at all: existence is not revealed.
    await expect_error(
        api.users.GetUser(users_pb2.GetUserRequest(user_id=NO_SUCH_ID), metadata=alice.md),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    await expect_invalid(
        api.users.GetUser(users_pb2.GetUserRequest(user_id="not-a-uuid"), metadata=alice.md), "user_id"
    )


async def test_admin_reads_anyone(api: Api) -> None:
    admin = await api.admin()
    user = await api.sign_up(first_name="Zed")
    seen = await get_user(api, admin, user.id)
    assert seen.id == user.id
    assert seen.first_name == "Zed"
    await expect_error(
        api.users.GetUser(users_pb2.GetUserRequest(user_id=NO_SUCH_ID), metadata=admin.md),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )


# Updating the own profile -----------------------------------------------------------


async def test_update_user_applies_only_masked_fields(api: Api) -> None:
    account = await api.sign_up(first_name="Old", last_name="Name")
    new_phone = unique_phone()
    updated = await update_me(
        api,
        account,
        users_pb2.User(
            first_name="  New ",
            last_name="Ignored",  # not in the mask
            phone=new_phone,
            emergency_contacts=[
                users_pb2.EmergencyContact(name="Sis", phone="+1 555 010 2000", relationship="sister"),
                users_pb2.EmergencyContact(name="Dad", phone="+15550102001", email="Dad@Example.com"),
            ],
        ),
        "first_name",
        "phone",
        "emergency_contacts",
    )
    assert updated.first_name == "New"
    assert updated.last_name == "Name"
    assert updated.phone == new_phone
    assert [(c.name, c.phone, c.email, c.relationship) for c in updated.emergency_contacts] == [
        ("Sis", "+15550102000", "", "sister"),
        ("Dad", "+15550102001", "dad@example.com", ""),
    ]
    # The change is stored, not only echoed.
    assert await get_user(api, account) == updated

    renamed = await update_me(api, account, users_pb2.User(last_name="Lin"), "last_name")
    assert (renamed.first_name, renamed.last_name) == ("New", "Lin")
    assert len(renamed.emergency_contacts) == 2
    cleared = await update_me(api, account, users_pb2.User(), "emergency_contacts")
    assert list(cleared.emergency_contacts) == []


async def test_update_user_rejects_unknown_mask_path(api: Api) -> None:
    account = await api.sign_up()
    for paths in (["email"], ["role"], ["first_name", "nonsense"], []):
        err = await expect_invalid(
            update_me(api, account, users_pb2.User(first_name="X", email="x@example.com"), *paths)
        )
        assert "update_mask" in err.fields, paths
    assert (await get_user(api, account)).first_name == account.user.first_name


async def test_update_user_names_the_bad_emergency_contact_field(api: Api) -> None:
    account = await api.sign_up()
    err = await expect_invalid(
        update_me(
            api,
            account,
            users_pb2.User(
                emergency_contacts=[
                    users_pb2.EmergencyContact(name="Sis", phone="12345"),
                    users_pb2.EmergencyContact(name="", phone="+15550102001", email="nope"),
                ]
            ),
            "emergency_contacts",
        )
    )
    assert set(err.fields) == {
        "user.emergency_contacts[0].phone",
        "user.emergency_contacts[1].name",
        "user.emergency_contacts[1].email",
    }
    assert list((await get_user(api, account)).emergency_contacts) == []


async def test_update_user_rejects_bad_values_and_taken_phone(api: Api) -> None:
    account = await api.sign_up()
    other = await api.sign_up()
    err = await expect_invalid(
        update_me(api, account, users_pb2.User(first_name=" ", phone="555"), "first_name", "phone")
    )
    assert set(err.fields) == {"user.first_name", "user.phone"}
    taken = await expect_error(
        update_me(api, account, users_pb2.User(phone=other.user.phone), "phone"),
        grpc.StatusCode.ALREADY_EXISTS,
        "ACCOUNT_EXISTS",
    )
    assert taken.metadata == {"field": "phone"}
    # Nobody updates someone else's profile.
    await expect_error(
        update_me(api, account, users_pb2.User(id=other.id, first_name="Hacked"), "first_name"),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_OWNER",
    )
    assert (await get_user(api, other)).first_name == other.user.first_name


# KYC --------------------------------------------------------------------------------


async def test_submit_kyc_names_every_missing_field(api: Api) -> None:
    account = await api.sign_up()
    err = await expect_invalid(
        api.users.SubmitKyc(users_pb2.SubmitKycRequest(kyc=users_pb2.KycData(address="x")), metadata=account.md)
    )
    assert set(err.fields) == {
        "kyc.document_type",
        "kyc.document_number",
        "kyc.full_legal_name",
        "kyc.date_of_birth",
        "kyc.issuing_country",
    }
    bad_values = users_pb2.KycData()
    bad_values.CopyFrom(KYC)
    bad_values.date_of_birth = "01/04/1990"
    bad_values.issuing_country = "U1"
    err = await expect_invalid(submit_kyc(api, account, bad_values))
    assert set(err.fields) == {"kyc.date_of_birth", "kyc.issuing_country"}
    assert not (await get_user(api, account)).kyc_submitted


async def test_kyc_is_encrypted_at_rest(api: Api, db_conn: asyncpg.Connection) -> None:
    account = await api.sign_up()
    user = await submit_kyc(api, account)
    assert user.kyc_submitted
    assert user.verification_status == common_pb2.VERIFICATION_STATUS_PENDING

    raw = await db_conn.fetchval("SELECT kyc_data::text FROM users WHERE id = $1", account.id)
    assert raw is not None
    assert KYC.document_number not in raw
    assert KYC.full_legal_name not in raw
    envelope = json.loads(raw)
    assert set(envelope) == {"v", "kid", "nonce", "ct"}
    assert envelope["ct"]
    # Nor does the audit log of the submission hold the documents.
    logged = await db_conn.fetchval(
        "SELECT string_agg(details::text, ' ') FROM audit_log WHERE resource_id = $1", account.id
    )
    assert KYC.document_number not in (logged or "")


async def test_get_kyc_for_owner_and_admin_and_every_read_is_audited(api: Api, db_conn: asyncpg.Connection) -> None:
    account = await api.sign_up()
    admin = await api.admin()
    stranger = await api.sign_up()
    await expect_error(
        api.users.GetKyc(users_pb2.GetKycRequest(user_id="me"), metadata=account.md),
        grpc.StatusCode.NOT_FOUND,
        "KYC_NOT_FOUND",
    )
    await submit_kyc(api, account)

    own = await api.users.GetKyc(users_pb2.GetKycRequest(user_id="me"), metadata=account.md)
    expected = users_pb2.KycData()
    expected.CopyFrom(KYC)
    expected.issuing_country = "US"  # normalised
    assert own.kyc == expected
    assert own.submit_time.seconds > 0
    by_admin = await api.users.GetKyc(users_pb2.GetKycRequest(user_id=account.id), metadata=admin.md)
    assert by_admin.kyc == expected

    await expect_error(
        api.users.GetKyc(users_pb2.GetKycRequest(user_id=account.id), metadata=stranger.md),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    reads = await audit_rows(db_conn, "user.kyc_read", account.id)
    assert [r["actor_id"] for r in reads] == [account.id, admin.id]


async def test_verified_user_cannot_resubmit_kyc(api: Api) -> None:
    account = await api.sign_up()
    admin = await api.admin()
    await submit_kyc(api, account)
    await api.users.VerifyUser(
        users_pb2.VerifyUserRequest(user_id=account.id, decision=common_pb2.VERIFICATION_STATUS_VERIFIED),
        metadata=admin.md,
    )
    await expect_error(submit_kyc(api, account), grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_VERIFIED")


# Administration ---------------------------------------------------------------------


async def test_list_users_is_admin_only(api: Api) -> None:
    account = await api.sign_up()
    await expect_error(
        api.users.ListUsers(users_pb2.ListUsersRequest(), metadata=account.md),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )


async def test_list_users_pages_through_everyone_once(api: Api) -> None:
    admin = await api.admin()
    accounts = [await api.sign_up() for _ in range(4)]
    provider = await api.sign_up(users_pb2.USER_ROLE_PROVIDER)
    everyone = {admin.id, provider.id} | {a.id for a in accounts}

    pages = await list_all_users(api, admin, page_size=2)
    assert [len(p) for p in pages] == [2, 2, 2]
    ids = [i for page in pages for i in page]
    assert len(ids) == len(set(ids))
    assert set(ids) == everyone
    assert ids[0] == provider.id  # newest first

    users_only = await list_all_users(api, admin, page_size=2, role=users_pb2.USER_ROLE_USER)
    assert {i for page in users_only for i in page} == {a.id for a in accounts}


async def test_list_users_rejects_a_token_from_other_filters(api: Api) -> None:
    admin = await api.admin()
    for _ in range(3):
        await api.sign_up()
    first = await api.users.ListUsers(users_pb2.ListUsersRequest(page_size=2), metadata=admin.md)
    assert first.next_page_token
    err = await expect_invalid(
        api.users.ListUsers(
            users_pb2.ListUsersRequest(page_size=2, page_token=first.next_page_token, role=users_pb2.USER_ROLE_USER),
            metadata=admin.md,
        )
    )
    assert "page_token" in err.fields
    await expect_invalid(
        api.users.ListUsers(users_pb2.ListUsersRequest(page_token="garbage!"), metadata=admin.md), "page_token"
    )


async def test_suspension_ends_access_at_once_and_reinstatement_restores_sign_in(
    api: Api, db_conn: asyncpg.Connection
) -> None:
    admin = await api.admin()
    account = await api.sign_up()
    await get_user(api, account)  # the session is now cached in Redis

    suspended = await api.users.SuspendUser(
        users_pb2.SuspendUserRequest(user_id=account.id, reason="abuse"), metadata=admin.md
    )
    assert suspended.user.status == users_pb2.USER_STATUS_SUSPENDED
    await expect_error(api.users.GetUser(me(), metadata=account.md), grpc.StatusCode.UNAUTHENTICATED, "SESSION_ENDED")
    await expect_error(sign_in(api, account), grpc.StatusCode.PERMISSION_DENIED, "ACCOUNT_SUSPENDED")
    assert await audit_rows(db_conn, "user.suspend", account.id)
    listed = await api.users.ListUsers(
        users_pb2.ListUsersRequest(status=users_pb2.USER_STATUS_SUSPENDED), metadata=admin.md
    )
    assert [u.id for u in listed.users] == [account.id]

    reinstated = await api.users.ReinstateUser(users_pb2.ReinstateUserRequest(user_id=account.id), metadata=admin.md)
    assert reinstated.user.status == users_pb2.USER_STATUS_ACTIVE
    fresh = await sign_in(api, account)
    resp = await api.users.GetUser(me(), metadata=(("authorization", f"Bearer {fresh.access_token}"),))
    assert resp.user.id == account.id
    # A second reinstatement has nothing to lift.
    await expect_error(
        api.users.ReinstateUser(users_pb2.ReinstateUserRequest(user_id=account.id), metadata=admin.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_SUSPENDED",
    )


async def test_a_session_read_racing_the_suspension_cannot_revive_the_session(api: Api) -> None:
    """A request that read the session from PostgreSQL just before the suspension
    committed writes that (now stale) state to the Redis cache afterwards; the token
    must stay dead all the same."""
    admin = await api.admin()
    account = await api.sign_up()
    session_id = api.app.access_tokens.decode(account.access_token).session_id
    stale = await api.app.authenticator.session_state(session_id)  # read before the suspension
    assert stale is not None
    assert stale.live

    await api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=account.id), metadata=admin.md)
    await api.app.live.put_session(session_id, stale.to_json())  # ... cached after it
    api.app.live._local_sessions.clear()  # as in another process, which has no local copy

    await expect_error(api.users.GetUser(me(), metadata=account.md), grpc.StatusCode.UNAUTHENTICATED, "SESSION_ENDED")
    await expect_error(
        api.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=account.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_suspend_needs_admin_and_an_existing_user(api: Api) -> None:
    admin = await api.admin()
    account = await api.sign_up()
    other = await api.sign_up()
    await expect_error(
        api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=other.id), metadata=account.md),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )
    await get_user(api, other)  # still fine
    await expect_error(
        api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=NO_SUCH_ID), metadata=admin.md),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )


async def test_verify_user_needs_kyc_first(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    account = await api.sign_up()
    verify = users_pb2.VerifyUserRequest(
        user_id=account.id, decision=common_pb2.VERIFICATION_STATUS_VERIFIED, note="docs ok"
    )
    await expect_error(
        api.users.VerifyUser(verify, metadata=admin.md), grpc.StatusCode.FAILED_PRECONDITION, "KYC_NOT_SUBMITTED"
    )
    await submit_kyc(api, account)
    err = await expect_invalid(
        api.users.VerifyUser(
            users_pb2.VerifyUserRequest(user_id=account.id, decision=common_pb2.VERIFICATION_STATUS_PENDING),
            metadata=admin.md,
        )
    )
    assert "decision" in err.fields
    await expect_error(
        api.users.VerifyUser(verify, metadata=account.md), grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"
    )

    verified = await api.users.VerifyUser(verify, metadata=admin.md)
    assert verified.user.verification_status == common_pb2.VERIFICATION_STATUS_VERIFIED
    assert (await get_user(api, account)).verification_status == common_pb2.VERIFICATION_STATUS_VERIFIED
    assert await audit_rows(db_conn, "user.verify", account.id)


async def test_set_user_role(api: Api) -> None:
    admin = await api.admin()
    account = await api.sign_up()
    err = await expect_invalid(
        api.users.SetUserRole(
            users_pb2.SetUserRoleRequest(user_id=account.id, role=users_pb2.USER_ROLE_POLICE), metadata=admin.md
        )
    )
    assert "agency_id" in err.fields
    await expect_error(
        api.users.SetUserRole(
            users_pb2.SetUserRoleRequest(
                user_id=account.id,
                role=users_pb2.USER_ROLE_POLICE,
                agency_id=NO_SUCH_ID,
            ),
            metadata=admin.md,
        ),
        grpc.StatusCode.NOT_FOUND,
        "DEPARTMENT_NOT_FOUND",
    )
    assert (await get_user(api, account)).role == users_pb2.USER_ROLE_USER

    duty = providers_pb2.UpdateProviderDutyRequest(provider_id=NO_SUCH_ID)
    await expect_error(
        api.providers.UpdateProviderDuty(duty, metadata=account.md),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )
    changed = await api.users.SetUserRole(
        users_pb2.SetUserRoleRequest(user_id=account.id, role=users_pb2.USER_ROLE_PROVIDER), metadata=admin.md
    )
    assert changed.user.role == users_pb2.USER_ROLE_PROVIDER
    assert (await get_user(api, account)).role == users_pb2.USER_ROLE_PROVIDER
    # The existing token acts with the new role at once: the role check now passes.
    await expect_error(
        api.providers.UpdateProviderDuty(duty, metadata=account.md),
        grpc.StatusCode.NOT_FOUND,
        "PROVIDER_NOT_FOUND",
    )


async def test_delete_self_ends_the_tokens(api: Api) -> None:
    account = await api.sign_up()
    deleted = await api.users.DeleteUser(users_pb2.DeleteUserRequest(user_id="me"), metadata=account.md)
    assert deleted.user.status == users_pb2.USER_STATUS_DELETED
    await expect_error(api.users.GetUser(me(), metadata=account.md), grpc.StatusCode.UNAUTHENTICATED, "SESSION_ENDED")
    # The e-mail address was erased with the account: nothing to sign in to.
    await expect_error(sign_in(api, account), grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS")
    admin = await api.admin()
    await expect_error(
        api.users.SuspendUser(users_pb2.SuspendUserRequest(user_id=account.id), metadata=admin.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_DELETED",
    )


async def test_deleting_an_account_erases_the_persons_data(
    api: Api, db_conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    """Deletion is final: name, e-mail, phone, last location, emergency contacts, KYC
    documents and password go; the e-mail and phone are free for a new account. The
    SOS alerts the person raised stay on record for the agencies that handled them."""
    admin = await api.admin()
    person = await api.sign_up(first_name="Erin", last_name="Erased")
    await api.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(
                id="me",
                emergency_contacts=[
                    users_pb2.EmergencyContact(name="Mum", phone=unique_phone(), relationship="mother")
                ],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["emergency_contacts"]),
        ),
        metadata=person.md,
    )
    await submit_kyc(api, person)
    alert = await raise_sos(api, person, (37.7749, -122.4194))
    assert await share(api.sos, person, alert.id, location((37.775, -122.4194))) == 1
    assert await redis_client.exists(f"user:location:{person.id}")

    await api.users.DeleteUser(users_pb2.DeleteUserRequest(user_id="me"), metadata=person.md)

    seen = (await api.users.GetUser(users_pb2.GetUserRequest(user_id=person.id), metadata=admin.md)).user
    assert seen.status == users_pb2.USER_STATUS_DELETED
    assert person.user.email not in seen.email
    assert person.user.phone != seen.phone
    assert (seen.first_name, seen.last_name, list(seen.emergency_contacts)) == ("", "", [])
    assert not seen.HasField("last_location")
    row = await db_conn.fetchrow(
        "SELECT kyc_data, kyc_submitted_at, location, location_data FROM users WHERE id = $1", person.id
    )
    assert tuple(row) == (None, None, None, None)
    assert not await redis_client.exists(f"user:location:{person.id}")
    await expect_error(
        api.users.GetKyc(users_pb2.GetKycRequest(user_id=person.id), metadata=admin.md),
        grpc.StatusCode.NOT_FOUND,
        "KYC_NOT_FOUND",
    )
    # Same e-mail and phone: a new, separate account.
    again = await api.sign_up(email=person.user.email, phone=person.user.phone)
    assert again.id != person.id
    assert again.user.status == users_pb2.USER_STATUS_ACTIVE
    kept = await api.sos.GetSosAlert(sos_pb2.GetSosAlertRequest(alert_id=alert.id), metadata=admin.md)
    assert kept.alert.user_id == person.id
    assert abs(kept.alert.location.point.latitude - 37.775) < 1e-6


async def test_deleting_an_account_cancels_its_open_bookings(
    api: Api, db_conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    """Nobody is left to receive the service: the account's PENDING and CONFIRMED
    bookings as a customer are cancelled as CancelBooking would (a paid one refunded,
    audited, published, the slot freed). Others' bookings and running ones stay."""
    admin = await api.admin()
    owner, prov = await api.verified_provider(admin)
    customer = await api.sign_up()
    pending = await book(api, customer, prov.id, hour(0), 1)
    paid = await book(api, customer, prov.id, hour(2), 1)
    await pay(api, admin, paid.id, PAID)
    await confirm(api, owner, paid.id)
    earlier = await cancel(api, customer, (await book(api, customer, prov.id, hour(4), 1)).id, "plans changed")
    running = await book(api, customer, prov.id, soon(), 1)
    await confirm(api, owner, running.id)
    await start(api, owner, running.id)
    someone_else = await book(api, await api.sign_up(), prov.id, hour(6), 1)

    async with subscribed(redis_client, "booking:update") as pubsub:
        await api.users.DeleteUser(users_pb2.DeleteUserRequest(user_id="me"), metadata=customer.md)
        published = {b.id: await booking_message(pubsub, b.id, "cancel") for b in (pending, paid)}

    after = {b.id: await get(api, admin, b.id) for b in (pending, paid, earlier, running, someone_else)}
    assert (after[pending.id].status, after[pending.id].payment_status) == (CANCELLED, PAY_PENDING)
    assert (after[paid.id].status, after[paid.id].payment_status) == (CANCELLED, REFUNDED)
    assert after[pending.id].cancel_reason == after[paid.id].cancel_reason == "account deleted"
    assert after[earlier.id] == earlier  # cancelled before: untouched, its reason kept
    assert after[running.id].status == IN_PROGRESS
    assert after[someone_else.id].status == PENDING
    assert (published[paid.id]["status"], published[paid.id]["payment_status"]) == ("cancelled", "refunded")
    assert published[pending.id]["status"] == "cancelled"
    for b in (pending, paid):
        assert (await audit_actions(db_conn, b.id))[-1] == "booking.cancel"
        assert [r["actor_id"] for r in await audit_rows(db_conn, "booking.cancel", b.id)] == [customer.id]
    # The slots are free again.
    assert (await book(api, await api.sign_up(), prov.id, hour(0), 3)).status == PENDING


async def test_an_admin_deleting_an_account_cancels_its_bookings(api: Api, db_conn: asyncpg.Connection) -> None:
    admin = await api.admin()
    _, prov = await api.verified_provider(admin)
    customer = await api.sign_up()
    booking = await book(api, customer, prov.id, hour(0), 1)
    await api.users.DeleteUser(users_pb2.DeleteUserRequest(user_id=customer.id), metadata=admin.md)
    after = await get(api, admin, booking.id)
    assert (after.status, after.cancel_reason) == (CANCELLED, "account deleted")
    assert [r["actor_id"] for r in await audit_rows(db_conn, "booking.cancel", booking.id)] == [admin.id]


async def test_users_cannot_delete_others(api: Api) -> None:
    account = await api.sign_up()
    other = await api.sign_up()
    await expect_error(
        api.users.DeleteUser(users_pb2.DeleteUserRequest(user_id=other.id), metadata=account.md),
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
    )
    assert (await get_user(api, other)).status == users_pb2.USER_STATUS_ACTIVE


async def test_user_service_checks_admin_itself(api: Api, db_conn: asyncpg.Connection) -> None:
    """Defence in depth: were the access table wrong, the service still refuses
    non-admins its admin operations, above all verifying or reinstating themselves."""
    person = await api.sign_up()
    await submit_kyc(api, person)
    other = await api.sign_up()
    users = api.app.users
    agency = str(uuid.uuid4())
    callers = [
        Principal(PrincipalKind.USER, person.id, Role.USER),
        Principal(PrincipalKind.USER, person.id, Role.PROVIDER),
        Principal(PrincipalKind.USER, person.id, Role.POLICE, agency),
        Principal(PrincipalKind.API_KEY, str(uuid.uuid4()), Role.POLICE, agency),
    ]
    for caller in callers:
        with pytest.raises(PermissionDenied):
            await users.list_users(caller, page_size=10, page_token="", role=None, status=None, verification=None)
        with pytest.raises(PermissionDenied):
            await users.verify_user(caller, person.id, VerificationStatus.VERIFIED, "")
        with pytest.raises(PermissionDenied):
            await users.suspend_user(caller, other.id, "")
        with pytest.raises(PermissionDenied):
            await users.reinstate_user(caller, person.id)
        with pytest.raises(PermissionDenied):
            await users.set_role(caller, other.id, Role.ADMIN, "")
    rows = await db_conn.fetch(
        "SELECT role::text, status::text, verification_status::text FROM users WHERE id = ANY($1::uuid[])",
        [uuid.UUID(person.id), uuid.UUID(other.id)],
    )
    assert sorted(tuple(r) for r in rows) == [("user", "active", "pending")] * 2
