"""The users CSV drop's contract: its source name, DLQ reason, and columns."""

from __future__ import annotations

from models.rules import CSV_MALFORMED

SOURCE = "csv"
FAILURE_REASON = CSV_MALFORMED
FIELDS: dict[str, tuple[str, ...]] = {
    "id_text": ("id",),
    "first_name": ("first_name",),
    "last_name": ("last_name",),
    "username": ("username",),
    "email": ("email",),
    "phone": ("phone",),
    "age_text": ("age",),
    "gender": ("gender",),
    "city": ("city",),
    "country": ("country",),
    "department": ("department",),
    "company_name": ("company",),
    "company_title": ("title",),
}
REQUIRED_COLUMNS = ("id", "first_name", "email", "age", "department")
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, "last_name", "gender", "company", "title", "city", "country", "username", "phone")
