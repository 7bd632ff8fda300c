"""Police departments and security agencies, and their API keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from securenow.server.domain.enums import AgencyType, DepartmentStatus


@dataclass(frozen=True)
class ContactInfo:
    contact_name: str = ""
    phone: str = ""
    email: str = ""
    address: str = ""


@dataclass
class Department:
    id: str
    department_name: str
    agency_type: AgencyType
    jurisdiction_geojson: dict[str, Any]
    contact_info: ContactInfo
    webhook_url: str
    status: DepartmentStatus
    provider_id: str | None
    ack_timeout_seconds: int
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    department_id: str
    display_prefix: str
    label: str
    create_time: datetime
    revoke_time: datetime | None = None


@dataclass(frozen=True)
class ApiKeySecret:
    """What authentication needs to check a presented key."""

    id: str
    department_id: str
    secret_hash: bytes
    revoked: bool
    department_active: bool
    agency_type: str


@dataclass(frozen=True)
class DepartmentDraft:
    """A department's editable fields as a caller sent them, not yet validated."""

    department_name: str = ""
    jurisdiction_geojson: str = ""
    contact_info: ContactInfo = ContactInfo()
    webhook_url: str = ""
    ack_timeout_seconds: int | None = None  # None: unset (the server default on register)
    status: DepartmentStatus | None = None


@dataclass(frozen=True)
class NewDepartment:
    department_name: str
    agency_type: AgencyType
    jurisdiction: dict[str, Any]
    contact_info: ContactInfo
    webhook_url: str
    provider_id: str | None
    ack_timeout_seconds: int
