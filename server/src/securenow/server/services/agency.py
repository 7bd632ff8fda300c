"""Departments (police departments and security agencies) and their API keys."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from securenow.server.domain.accounts import Principal
from securenow.server.domain.agency import ApiKeyInfo, ContactInfo, Department, NewDepartment
from securenow.server.domain.enums import AgencyType
from securenow.server.domain.errors import NotFound
from securenow.server.domain.geo import validate_area_geojson
from securenow.server.domain.paging import page_request
from securenow.server.domain.validation import Validator, parse_uuid
from securenow.server.security.encryption import FieldEncryptor
from securenow.server.security.tokens import OpaqueSecretCodec
from securenow.server.services.common import replayed_resource
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.postgres import Database

MIN_ACK_TIMEOUT = 1
MAX_ACK_TIMEOUT = 600


class AgencyService:
    def __init__(
        self,
        db: Database,
        encryptor: FieldEncryptor,
        api_keys: OpaqueSecretCodec,
        *,
        default_ack_timeout_seconds: int,
        allow_http_webhooks: bool,
        on_key_revoked: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._enc = encryptor
        self._keys = api_keys
        self._default_timeout = default_ack_timeout_seconds
        self._allow_http = allow_http_webhooks
        # Drops this replica's cache of validated keys; other replicas keep theirs for
        # at most the cache lifetime (2 s), and open streams close within seconds.
        self._on_key_revoked = on_key_revoked

    async def register(
        self,
        caller: Principal,
        *,
        department_name: str,
        jurisdiction_geojson: str,
        contact_info: ContactInfo,
        webhook_url: str,
        agency_type: AgencyType | None,
        provider_id: str,
        ack_timeout_seconds: int | None,
        key: IdempotencyKey | None,
    ) -> tuple[Department, str | None]:
        """Returns the department and its webhook secret (None for a replayed request:
        the secret is shown once)."""
        caller.require_admin("manage departments and their API keys")
        v = Validator()
        name = v.text("department_name", department_name, required=True, max_len=255)
        area = validate_area_geojson(v, "jurisdiction_geojson", jurisdiction_geojson, required=True)
        url = webhook_url.strip()
        if url and v.characters("webhook_url", url, single_line=True):
            parts = urlsplit(url)
            schemes = ("https", "http") if self._allow_http else ("https",)
            if parts.scheme not in schemes or not parts.hostname or len(url) > 500:
                v.add("webhook_url", "must be an https:// URL of at most 500 characters")
        provider = v.uuid("provider_id", provider_id, required=False) or None
        timeout = ack_timeout_seconds if ack_timeout_seconds is not None else self._default_timeout
        v.int_range("ack_timeout", timeout, MIN_ACK_TIMEOUT, MAX_ACK_TIMEOUT)
        with v.nested("contact_info") as c:
            contact = ContactInfo(
                contact_name=c.text("contact_name", contact_info.contact_name, max_len=200),
                phone=c.phone("phone", contact_info.phone, required=False),
                email=c.email("email", contact_info.email, required=False),
                address=c.text("address", contact_info.address, max_len=500),
            )
        v.check()
        assert area is not None
        new_id = str(uuid.uuid4())
        secret = "whsec_" + secrets.token_urlsafe(32)
        async with self._db.unit_of_work() as uow:
            prior = await replayed_resource(uow, caller, "RegisterDepartment", key, new_id)
            if prior is not None:
                department = await uow.agency.get_department(prior)
                assert department is not None
                return department, None
            if provider is not None and await uow.providers.get(provider) is None:
                raise NotFound("provider not found", reason="PROVIDER_NOT_FOUND")
            department = await uow.agency.create_department(
                new_id,
                NewDepartment(
                    department_name=name,
                    agency_type=agency_type or AgencyType.POLICE_DEPARTMENT,
                    jurisdiction=area,
                    contact_info=contact,
                    webhook_url=url,
                    provider_id=provider,
                    ack_timeout_seconds=timeout,
                ),
                self._enc.encrypt({"webhook_secret": secret}, bound_to=f"department:{new_id}"),
            )
            await uow.audit.record(
                caller,
                AuditEntry("agency.register", "department", new_id, details={"type": department.agency_type}),
            )
        return department, secret

    async def get(self, caller: Principal, department_id: str) -> Department:
        did = parse_uuid("department_id", department_id)
        if not caller.is_admin and caller.agency_id != did:
            raise NotFound("department not found", reason="DEPARTMENT_NOT_FOUND")
        async with self._db.unit_of_work() as uow:
            department = await uow.agency.get_department(did)
        if department is None:
            raise NotFound("department not found", reason="DEPARTMENT_NOT_FOUND")
        return department

    async def list_departments(
        self, caller: Principal, page_size: int, page_token: str
    ) -> tuple[list[Department], str]:
        caller.require_admin("manage departments and their API keys")
        page = page_request(page_size, page_token, filters=("departments",))
        async with self._db.unit_of_work() as uow:
            items, cursor = await uow.agency.list_departments(page)
        return items, page.next_token(cursor)

    async def issue_key(self, caller: Principal, department_id: str, label: str) -> tuple[str, ApiKeyInfo]:
        caller.require_admin("manage departments and their API keys")
        v = Validator()
        did = v.uuid("department_id", department_id)
        label = v.text("label", label, max_len=100)
        v.check()
        minted = self._keys.mint()
        async with self._db.unit_of_work() as uow:
            if await uow.agency.get_department(did) is None:
                raise NotFound("department not found", reason="DEPARTMENT_NOT_FOUND")
            info = await uow.agency.create_api_key(minted.id, did, minted.digest, minted.token[:12], label)
            await uow.audit.record(
                caller, AuditEntry("agency.issue_key", "api_key", minted.id, details={"department": did})
            )
        return minted.token, info

    async def revoke_key(self, caller: Principal, key_id: str) -> ApiKeyInfo:
        caller.require_admin("manage departments and their API keys")
        kid = parse_uuid("key_id", key_id)
        async with self._db.unit_of_work() as uow:
            info = await uow.agency.revoke_api_key(kid)
            if info is None:
                raise NotFound("API key not found", reason="API_KEY_NOT_FOUND")
            await uow.audit.record(caller, AuditEntry("agency.revoke_key", "api_key", kid))
        self._on_key_revoked()
        return info

    async def list_keys(
        self, caller: Principal, department_id: str, page_size: int, page_token: str
    ) -> tuple[list[ApiKeyInfo], str]:
        caller.require_admin("manage departments and their API keys")
        did = parse_uuid("department_id", department_id)
        page = page_request(page_size, page_token, filters=("api_keys", did))
        async with self._db.unit_of_work() as uow:
            if await uow.agency.get_department(did) is None:
                raise NotFound("department not found", reason="DEPARTMENT_NOT_FOUND")
            items, cursor = await uow.agency.list_api_keys(did, page)
        return items, page.next_token(cursor)
