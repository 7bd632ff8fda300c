"""Departments (police departments and security agencies) and their API keys."""

from __future__ import annotations

import ipaddress
import itertools
import re
import secrets
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from securenow.server.domain.accounts import Principal
from securenow.server.domain.agency import ApiKeyInfo, ContactInfo, Department, DepartmentDraft, NewDepartment
from securenow.server.domain.enums import AgencyType, DepartmentStatus
from securenow.server.domain.errors import NotFound
from securenow.server.domain.geo import validate_area_geojson
from securenow.server.domain.paging import page_request
from securenow.server.domain.validation import Validator, parse_uuid
from securenow.server.security.encryption import FieldEncryptor
from securenow.server.security.tokens import OpaqueSecretCodec
from securenow.server.services.common import replace_sessions, replayed_resource
from securenow.server.services.dispatch import DispatchService
from securenow.server.storage.audit_repo import AuditEntry
from securenow.server.storage.idempotency_repo import IdempotencyKey
from securenow.server.storage.live_state import LiveState
from securenow.server.storage.postgres import Database

MIN_ACK_TIMEOUT = 1
MAX_ACK_TIMEOUT = 600
# What an admin can change after registration (UpdateDepartment's update_mask paths).
UPDATE_PATHS = ("department_name", "contact_info", "webhook_url", "jurisdiction_geojson", "ack_timeout", "status")
REGISTER_PATHS = tuple(p for p in UPDATE_PATHS if p != "status")
HOSTNAME_RE = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class AgencyService:
    def __init__(
        self,
        db: Database,
        live: LiveState,
        dispatch: DispatchService,
        encryptor: FieldEncryptor,
        api_keys: OpaqueSecretCodec,
        *,
        default_ack_timeout_seconds: int,
        allow_http_webhooks: bool,
        on_key_revoked: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._live = live
        self._dispatch = dispatch
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
        draft: DepartmentDraft,
        *,
        agency_type: AgencyType | None,
        provider_id: str,
        key: IdempotencyKey | None,
    ) -> tuple[Department, str | None]:
        """Returns the department and its webhook secret (None for a replayed request:
        the secret is shown once)."""
        caller.require_admin("manage departments and their API keys")
        v = Validator()
        if draft.ack_timeout_seconds is None:
            draft = replace(draft, ack_timeout_seconds=self._default_timeout)
        values = self._validate(v, draft, REGISTER_PATHS, prefix="")
        provider = v.uuid("provider_id", provider_id, required=False) or None
        v.check()
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
                    department_name=values["department_name"],
                    agency_type=agency_type or AgencyType.POLICE_DEPARTMENT,
                    jurisdiction=values["jurisdiction"],
                    contact_info=values["contact_info"],
                    webhook_url=values["webhook_url"],
                    provider_id=provider,
                    ack_timeout_seconds=values["ack_timeout_seconds"],
                ),
                self._enc.encrypt({"webhook_secret": secret}, bound_to=f"department:{new_id}"),
            )
            await uow.audit.record(
                caller,
                AuditEntry("agency.register", "department", new_id, details={"type": department.agency_type}),
            )
        return department, secret

    async def update(
        self, caller: Principal, department_id: str, draft: DepartmentDraft, paths: list[str]
    ) -> Department:
        """Changes the fields named by `paths`. A department that stops being active
        hands its alerts that no one has accepted yet to the next agency in the same
        transaction; its keys and dispatchers stop working at once (streams close at
        the next credential check)."""
        caller.require_admin("manage departments and their API keys")
        v = Validator()
        did = v.uuid("department.id", department_id)
        if not paths:
            v.add("update_mask", "must name at least one field")
        unknown = [p for p in paths if p not in UPDATE_PATHS]
        if unknown:
            v.add("update_mask", f"unknown or read-only paths {unknown}; allowed: {', '.join(UPDATE_PATHS)}")
        values = self._validate(v, draft, tuple(p for p in paths if p in UPDATE_PATHS), prefix="department")
        v.check()
        async with self._db.unit_of_work() as uow:
            before = await uow.agency.get_department(did, for_update=True)
            if before is None:
                raise NotFound("department not found", reason="DEPARTMENT_NOT_FOUND")
            department = await uow.agency.update_department(did, values)
            details: dict[str, object] = {"paths": sorted(set(paths))}
            if department.webhook_url != before.webhook_url:
                # Where the department's emergencies are POSTed: the previous address
                # is kept nowhere else. Without the query (it may carry a token).
                details["webhook_url"] = {
                    "from": _loggable(before.webhook_url),
                    "to": _loggable(department.webhook_url),
                }
            status_changed = department.status is not before.status
            if status_changed:
                details["status"] = {"from": before.status.value, "to": department.status.value}
            if before.status is DepartmentStatus.ACTIVE and status_changed:
                details["rerouted_alerts"] = await self._dispatch.reroute_from(
                    uow, did, f"the agency is {department.status.value}"
                )
            await uow.audit.record(caller, AuditEntry("agency.update", "department", did, details=details))
            if status_changed:
                # Dispatcher accounts act for the agency only while it is active: their
                # cached session state is replaced by one with or without the agency.
                states = await uow.accounts.session_states(await uow.accounts.agency_session_ids(did))
                fresh = {sid: state.to_json() for sid, state in states.items()}
                uow.after_commit(lambda: replace_sessions(self._live, fresh))
        if status_changed:
            self._on_key_revoked()
        return department

    def _validate(self, v: Validator, draft: DepartmentDraft, paths: tuple[str, ...], *, prefix: str) -> dict[str, Any]:
        """Column values for the fields named by `paths` (violations go to `v`)."""
        values: dict[str, Any] = {}
        with v.nested(prefix) if prefix else nullcontext(v) as d:
            if "department_name" in paths:
                values["department_name"] = d.text(
                    "department_name", draft.department_name, required=True, max_len=255, single_line=True
                )
            if "jurisdiction_geojson" in paths:
                area = validate_area_geojson(d, "jurisdiction_geojson", draft.jurisdiction_geojson, required=True)
                if area is not None and _crosses_antimeridian(area):
                    d.add(
                        "jurisdiction_geojson",
                        "has an edge crossing the antimeridian (over 180 degrees of longitude): split the area "
                        "there into a MultiPolygon (RFC 7946, 3.1.9)",
                    )
                values["jurisdiction"] = area
            if "webhook_url" in paths:
                values["webhook_url"] = self._webhook_url(d, draft.webhook_url)
            if "ack_timeout" in paths:
                timeout = draft.ack_timeout_seconds
                if timeout is None:
                    d.add("ack_timeout", "is required")
                else:
                    d.int_range("ack_timeout", timeout, MIN_ACK_TIMEOUT, MAX_ACK_TIMEOUT)
                values["ack_timeout_seconds"] = timeout
            if "status" in paths:
                if draft.status is None:
                    d.add("status", "is required")
                values["status"] = draft.status
            if "contact_info" in paths:
                c = draft.contact_info
                with d.nested("contact_info") as cv:
                    values["contact_info"] = ContactInfo(
                        contact_name=cv.text("contact_name", c.contact_name, max_len=200),
                        phone=cv.phone("phone", c.phone, required=False),
                        email=cv.email("email", c.email, required=False),
                        address=cv.text("address", c.address, max_len=500),
                    )
        return values

    def _webhook_url(self, v: Validator, webhook_url: str) -> str:
        url = webhook_url.strip()
        if url and v.characters("webhook_url", url, single_line=True):
            schemes = ("https", "http") if self._allow_http else ("https",)
            if len(url) > 500 or not _usable_url(url, schemes):
                v.add("webhook_url", "must be an https:// URL (host, optional port, path) of at most 500 characters")
            elif not self._allow_http and _internal_host(url):
                # Production: the server's own machine, link-local (cloud metadata
                # services) and the like are no CAD's address.
                v.add("webhook_url", "must not point at a loopback, link-local, multicast or reserved address")
        return url

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
            await uow.audit.record(
                caller, AuditEntry("agency.revoke_key", "api_key", kid, details={"department": info.department_id})
            )
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


def _crosses_antimeridian(area: dict[str, Any]) -> bool:
    """Whether an edge of the area spans more than 180 degrees of longitude. GeoJSON
    edges are straight lines in longitude/latitude (routing reads them so), so such an
    edge runs the long way round the world: an island's area written across 180
    degrees without being split would become a band covering everything else. An edge
    between two points on the +-180 meridian is the border of the map (a polar cap
    written from -180 to 180), not a crossing."""
    polygons = [area["coordinates"]] if area["type"] == "Polygon" else area["coordinates"]
    for polygon in polygons:
        for ring in polygon:
            for (lng1, _), (lng2, _) in itertools.pairwise(ring):
                if abs(lng1 - lng2) > 180 and not (abs(lng1) == 180 and abs(lng2) == 180):
                    return True
    return False


def _loggable(url: str) -> str:
    """A webhook URL without its query and fragment (they may carry a token)."""
    if not url:
        return ""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _internal_host(url: str) -> bool:
    """Whether the URL's host is this machine or an address no outside system has:
    localhost, or a loopback, link-local, unspecified, multicast or reserved IP
    (IPv4-mapped IPv6 included). Private networks stay allowed: a CAD may sit behind a
    VPN. A DNS name is judged by its text only: one that resolves to such an address
    is not caught here."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved


def _usable_url(url: str, schemes: tuple[str, ...]) -> bool:
    """A URL a webhook can be delivered to: an allowed scheme, a DNS name or IP address,
    a valid port, and no credentials in it (URLs end up in logs; the payload is signed)."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises for one out of range
    except ValueError:
        return False
    if parts.scheme not in schemes or not host or parts.username is not None or parts.password is not None:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return HOSTNAME_RE.fullmatch(host) is not None
