"""Points, device location fixes and GeoJSON areas."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from securenow.server.domain.validation import Validator

# A device clock may be off; fixes from further in the future than this are refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# A phone may send fixes it buffered while offline, but a fix older than this says
# nothing about where someone in danger is now (and a zero date is a client bug).
MAX_FIX_AGE = timedelta(days=1)
EARTH_RADIUS_M = 6_371_008.8
# A city's or a county's boundary is a few hundred kB at most. Longer text is refused
# before parsing: json.loads on megabytes of nesting costs time and ends in RecursionError.
MAX_GEOJSON_LENGTH = 1_000_000


@dataclass(frozen=True)
class Point:
    latitude: float
    longitude: float

    def to_json(self) -> dict[str, float]:
        return {"lat": self.latitude, "lng": self.longitude}

    def distance_m(self, other: Point) -> float:
        """Great-circle distance in meters (haversine on the mean Earth radius; within
        0.5% of PostGIS's spheroid distance)."""
        lat1, lat2 = math.radians(self.latitude), math.radians(other.latitude)
        dlat = lat2 - lat1
        dlng = math.radians(other.longitude - self.longitude)
        h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlng / 2) ** 2
        return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class LocationFix:
    point: Point
    time: datetime
    accuracy_m: float = 0.0
    heading_deg: float = 0.0
    speed_mps: float = 0.0
    address: str = ""

    def to_json(self) -> dict[str, Any]:
        """The `location_data` JSONB form used by every table."""
        return {
            "lat": self.point.latitude,
            "lng": self.point.longitude,
            "accuracy_m": self.accuracy_m,
            "heading_deg": self.heading_deg,
            "speed_mps": self.speed_mps,
            "address": self.address,
            "time": self.time.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> LocationFix | None:
        if not data or "lat" not in data:
            return None
        return cls(
            point=Point(float(data["lat"]), float(data["lng"])),
            time=datetime.fromisoformat(data["time"]),
            accuracy_m=float(data.get("accuracy_m") or 0.0),
            heading_deg=float(data.get("heading_deg") or 0.0),
            speed_mps=float(data.get("speed_mps") or 0.0),
            address=str(data.get("address") or ""),
        )


@dataclass
class LocationInput:
    """A fix as received from a client, before validation."""

    latitude: float
    longitude: float
    accuracy_m: float = 0.0
    time: datetime | None = None
    heading_deg: float = 0.0
    speed_mps: float = 0.0
    address: str = ""
    has_point: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def validate_location(
    v: Validator, name: str, loc: LocationInput, *, now: datetime | None = None, max_age: timedelta = MAX_FIX_AGE
) -> LocationFix:
    now = now or datetime.now(UTC)
    with v.nested(name) as lv:
        if not loc.has_point:
            lv.add("point", "is required")
        else:
            lv.lat_lng("point", loc.latitude, loc.longitude)
        if not math.isfinite(loc.accuracy_m) or loc.accuracy_m < 0 or loc.accuracy_m > 100_000:
            lv.add("accuracy_m", "must be between 0 and 100000")
        if not math.isfinite(loc.heading_deg) or not 0 <= loc.heading_deg < 360:
            lv.add("heading_deg", "must be in [0, 360)")
        if not math.isfinite(loc.speed_mps) or not 0 <= loc.speed_mps <= 500:
            lv.add("speed_mps", "must be between 0 and 500")
        if len(loc.address) > 500:
            lv.add("address", "must be at most 500 characters")
        else:
            lv.characters("address", loc.address)
        if loc.time is not None and loc.time > now + MAX_CLOCK_SKEW:
            lv.add("time", "must not be in the future")
        elif loc.time is not None and loc.time < now - max_age:
            lv.add("time", f"must be within the last {max_age.days} day{'s' if max_age.days > 1 else ''}")
    return LocationFix(
        point=Point(loc.latitude, loc.longitude),
        # A fix from the (allowed) near future is taken as of now: kept as sent, it would
        # count as newer than every real fix for minutes and freeze the live position
        # once the phone's clock is corrected.
        time=min(loc.time, now) if loc.time is not None else now,
        accuracy_m=loc.accuracy_m,
        heading_deg=loc.heading_deg,
        speed_mps=loc.speed_mps,
        address=loc.address.strip(),
    )


def validate_area_geojson(v: Validator, name: str, text: str, *, required: bool) -> dict[str, Any] | None:
    """Structural check of a GeoJSON Polygon/MultiPolygon. Topology (self-intersection)
    is checked by PostGIS when the area is stored."""
    if not text.strip():
        if required:
            v.add(name, "is required")
        return None
    if len(text) > MAX_GEOJSON_LENGTH:
        v.add(name, f"must be at most {MAX_GEOJSON_LENGTH} characters")
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        v.add(name, "must be GeoJSON text")
        return None
    if isinstance(data, dict) and data.get("type") == "Feature":
        data = data.get("geometry")
    if not isinstance(data, dict) or data.get("type") not in ("Polygon", "MultiPolygon"):
        v.add(name, "must be a GeoJSON Polygon or MultiPolygon")
        return None
    polygons = [data.get("coordinates")] if data["type"] == "Polygon" else data.get("coordinates")
    if not isinstance(polygons, list) or not polygons:
        v.add(name, "has no coordinates")
        return None
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            v.add(name, "has an empty polygon")
            return None
        for ring in polygon:
            if not _valid_ring(ring):
                v.add(name, "rings need at least 4 [longitude, latitude] positions and must be closed")
                return None
    # Only the geometry is kept: foreign members (properties, bbox...) could be nested
    # arbitrarily deep and nothing reads them. Areas are 2-D: altitudes are dropped.
    flat = [[[pos[:2] for pos in ring] for ring in polygon] for polygon in polygons]
    return {"type": data["type"], "coordinates": flat[0] if data["type"] == "Polygon" else flat}


def _is_number(value: Any) -> bool:
    # json.loads reads NaN, Infinity and 1e400 (inf) as floats: none is a coordinate.
    # Integers are exact (math.isfinite overflows on a 400-digit one); range is checked after.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _valid_ring(ring: Any) -> bool:
    if not isinstance(ring, list) or len(ring) < 4:
        return False
    for pos in ring:
        # [longitude, latitude] or with an altitude; nothing else may hide in a position.
        if not (isinstance(pos, list) and 2 <= len(pos) <= 3 and all(_is_number(c) for c in pos)):
            return False
        if not (-180 <= pos[0] <= 180 and -90 <= pos[1] <= 90):
            return False
    return bool(ring[0][:2] == ring[-1][:2])
