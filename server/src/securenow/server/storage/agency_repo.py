"""Departments (police_departments) and their API keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg

from securenow.server.domain.agency import ApiKeyInfo, ApiKeySecret, ContactInfo, Department, NewDepartment
from securenow.server.domain.enums import AgencyType, DepartmentStatus
from securenow.server.domain.paging import PageRequest
from securenow.server.storage.rows import AREA_SQL, Conn, check_area, must, newest_first, sid

DEPARTMENT_COLUMNS = """d.id, d.department_name, d.agency_type, d.jurisdiction, d.contact_info, d.webhook_url,
    d.status, d.provider_id, d.ack_timeout_seconds, d.created_at, d.updated_at"""
# Columns UpdateDepartment may set, with how a domain value is stored.
UPDATABLE_COLUMNS: dict[str, Callable[[Any], Any]] = {
    "department_name": str,
    "jurisdiction": lambda area: area,
    "contact_info": lambda contact: contact.__dict__,
    "webhook_url": lambda url: url or None,
    "ack_timeout_seconds": int,
    "status": lambda status: status.value,
}
KEY_COLUMNS = "k.id, k.department_id, k.display_prefix, k.label, k.created_at, k.revoked_at"


def department_from_row(r: asyncpg.Record) -> Department:
    return Department(
        id=str(r["id"]),
        department_name=r["department_name"],
        agency_type=AgencyType(r["agency_type"]),
        jurisdiction_geojson=r["jurisdiction"] or {},
        contact_info=ContactInfo(**(r["contact_info"] or {})),
        webhook_url=r["webhook_url"] or "",
        status=DepartmentStatus(r["status"] or "active"),
        provider_id=sid(r["provider_id"]),
        ack_timeout_seconds=r["ack_timeout_seconds"],
        create_time=r["created_at"],
        update_time=r["updated_at"],
    )


def key_from_row(r: asyncpg.Record) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=str(r["id"]),
        department_id=str(r["department_id"]),
        display_prefix=r["display_prefix"],
        label=r["label"],
        create_time=r["created_at"],
        revoke_time=r["revoked_at"],
    )


class AgencyRepo:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def create_department(self, department_id: str, d: NewDepartment, credentials: dict[str, Any]) -> Department:
        await check_area(self.conn, d.jurisdiction, "jurisdiction_geojson")
        row = await self.conn.fetchrow(
            f"""INSERT INTO police_departments AS d (id, department_name, agency_type, jurisdiction,
                    jurisdiction_geom, contact_info, api_credentials, webhook_url, provider_id, ack_timeout_seconds)
                VALUES ($1, $2, $3, $4, {AREA_SQL.format(param="$5")}, $6, $7, $8, $9, $10)
                RETURNING {DEPARTMENT_COLUMNS}""",
            department_id,
            d.department_name,
            d.agency_type.value,
            d.jurisdiction,
            json.dumps(d.jurisdiction),
            d.contact_info.__dict__,
            credentials,
            d.webhook_url or None,
            d.provider_id,
            d.ack_timeout_seconds,
        )
        return department_from_row(must(row))

    async def get_department(self, department_id: str, *, for_update: bool = False) -> Department | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(
            f"SELECT {DEPARTMENT_COLUMNS} FROM police_departments d WHERE d.id = $1{lock}", department_id
        )
        return department_from_row(row) if row else None

    async def update_department(self, department_id: str, values: dict[str, Any]) -> Department:
        """Sets the given columns (keys of UPDATABLE_COLUMNS; `jurisdiction` also sets
        the geometry routing uses)."""
        sets, args = ["updated_at = now()"], [department_id]
        for column, value in values.items():
            args.append(UPDATABLE_COLUMNS[column](value))
            param = f"${len(args)}"
            if column == "jurisdiction":
                await check_area(self.conn, value, "department.jurisdiction_geojson")
                args.append(json.dumps(value))
                sets.append(f"jurisdiction = {param}, jurisdiction_geom = {AREA_SQL.format(param=f'${len(args)}')}")
            else:
                sets.append(f"{column} = {param}")
        row = await self.conn.fetchrow(
            f"UPDATE police_departments d SET {', '.join(sets)} WHERE d.id = $1 RETURNING {DEPARTMENT_COLUMNS}", *args
        )
        return department_from_row(must(row))

    async def get_credentials(self, department_id: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = await self.conn.fetchval(
            "SELECT api_credentials FROM police_departments WHERE id = $1", department_id
        )
        return value

    async def list_departments(self, page: PageRequest) -> tuple[list[Department], list[Any] | None]:
        rows, cursor = await newest_first(
            self.conn, page, f"SELECT {DEPARTMENT_COLUMNS} FROM police_departments d", "d", {}
        )
        return [department_from_row(r) for r in rows], cursor

    # API keys -----------------------------------------------------------------------

    async def create_api_key(
        self, key_id: str, department_id: str, digest: bytes, display_prefix: str, label: str
    ) -> ApiKeyInfo:
        row = await self.conn.fetchrow(
            f"""INSERT INTO agency_api_keys AS k (id, department_id, secret_hash, display_prefix, label)
                VALUES ($1, $2, $3, $4, $5) RETURNING {KEY_COLUMNS}""",
            key_id,
            department_id,
            digest,
            display_prefix,
            label,
        )
        return key_from_row(must(row))

    async def get_api_key(self, key_id: str) -> ApiKeyInfo | None:
        row = await self.conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM agency_api_keys k WHERE k.id = $1", key_id)
        return key_from_row(row) if row else None

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo | None:
        row = await self.conn.fetchrow(
            f"""UPDATE agency_api_keys k SET revoked_at = COALESCE(revoked_at, now()) WHERE k.id = $1
                RETURNING {KEY_COLUMNS}""",
            key_id,
        )
        return key_from_row(row) if row else None

    async def list_api_keys(self, department_id: str, page: PageRequest) -> tuple[list[ApiKeyInfo], list[Any] | None]:
        select = f"SELECT {KEY_COLUMNS} FROM agency_api_keys k"
        rows, cursor = await newest_first(self.conn, page, select, "k", {"k.department_id": department_id})
        return [key_from_row(r) for r in rows], cursor

    async def get_api_key_secret(self, key_id: str) -> ApiKeySecret | None:
        row = await self.conn.fetchrow(
            """SELECT k.id, k.department_id, k.secret_hash, k.revoked_at IS NOT NULL AS revoked,
                      d.status = 'active' AS department_active, d.agency_type
               FROM agency_api_keys k JOIN police_departments d ON d.id = k.department_id WHERE k.id = $1""",
            key_id,
        )
        if row is None:
            return None
        return ApiKeySecret(
            id=str(row["id"]),
            department_id=str(row["department_id"]),
            secret_hash=bytes(row["secret_hash"]),
            revoked=row["revoked"],
            department_active=bool(row["department_active"]),
            agency_type=row["agency_type"],
        )

    async def unusable_api_keys(self, key_ids: list[str]) -> dict[str, bool]:
        """Of these keys, the ones revoked (True) or belonging to a department that is
        not active (False)."""
        rows = await self.conn.fetch(
            """SELECT k.id, k.revoked_at IS NOT NULL AS revoked
               FROM agency_api_keys k JOIN police_departments d ON d.id = k.department_id
               WHERE k.id = ANY($1::uuid[]) AND (k.revoked_at IS NOT NULL OR d.status <> 'active')""",
            key_ids,
        )
        return {str(r["id"]): r["revoked"] for r in rows}
