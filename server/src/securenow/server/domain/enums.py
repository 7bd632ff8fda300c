"""Enumerations; values are the PostgreSQL enum labels of the seed schema."""

from enum import StrEnum


class Role(StrEnum):
    USER = "user"
    PROVIDER = "provider"
    ADMIN = "admin"
    POLICE = "police"
    SECURITY_AGENCY = "security_agency"


class UserStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETED = "deleted"


class VerificationStatus(StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    REJECTED = "rejected"


class ProviderType(StrEnum):
    SECURITY_GUARD = "security_guard"
    DRONE_PATROL = "drone_patrol"
    SECURITY_AGENCY = "security_agency"
    POLICE_DEPARTMENT = "police_department"


class ServiceType(StrEnum):
    SECURITY_GUARD = "security_guard"
    DRONE_PATROL = "drone_patrol"
    EVENT_SECURITY = "event_security"


class BookingStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    REFUNDED = "refunded"
    FAILED = "failed"


class SosStatus(StrEnum):
    ACTIVE = "active"
    RESPONDING = "responding"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"


class AlertPriority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class IncidentType(StrEnum):
    ASSAULT = "assault"
    THEFT = "theft"
    MEDICAL = "medical"
    SUSPICIOUS_ACTIVITY = "suspicious_activity"
    OTHER = "other"


class IncidentStatus(StrEnum):
    REPORTED = "reported"
    DISPATCHED = "dispatched"
    ON_SCENE = "on_scene"
    RESOLVED = "resolved"


class DepartmentStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    SUSPENDED = "suspended"


class AgencyType(StrEnum):
    POLICE_DEPARTMENT = "police_department"
    SECURITY_AGENCY = "security_agency"
