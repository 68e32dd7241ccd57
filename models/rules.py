"""The names of the users rules (a dead-lettered record's reasons), apart from their Polars expressions in
models/schema.py, so that the API can list them without loading Polars."""

from __future__ import annotations

from sqlmodel import SQLModel

from models.users import UserBase

SET_BY_PIPELINE = ("source",)  # stored columns no record gives a value to

# a staged line that is not a JSON object fails one of these, and only that
RECORD_UNPARSEABLE = "record_unparseable"
RECORD_NOT_OBJECT = "record_not_object"
# the product's rules
ID_NOT_INTEGER = "id_not_integer"
ID_DUPLICATE = "id_duplicate"
FIRST_NAME_MISSING = "first_name_missing"
EMAIL_INVALID = "email_invalid"
AGE_NOT_INTEGER = "age_not_integer"
AGE_OUT_OF_RANGE = "age_out_of_range"
DEPARTMENT_MISSING = "department_missing"
DEPARTMENT_UNKNOWN = "department_unknown"
# what the tables enforce (besides a `<column>_too_long` per column with a declared length)
ID_OUT_OF_RANGE = "id_out_of_range"
TEXT_CONTAINS_NUL = "text_contains_nul"
NUMBER_NOT_FINITE = "number_not_finite"
# a CSV drop's line that could not be read as a record (no rule judged it)
CSV_MALFORMED = "csv_malformed"


def too_long(column: str) -> str:
    return f"{column}_too_long"


def max_lengths(model: type[SQLModel] = UserBase) -> dict[str, int]:
    """The model's text columns with a declared length (VARCHAR(n) on PostgreSQL), those records fill."""
    return {
        name: meta.max_length
        for name, field in model.model_fields.items()
        for meta in field.metadata
        if getattr(meta, "max_length", None) and name not in SET_BY_PIPELINE
    }


def storage_rule_names() -> list[str]:
    return [ID_OUT_OF_RANGE, *(too_long(col) for col in max_lengths()), TEXT_CONTAINS_NUL, NUMBER_NOT_FINITE]


def user_rule_names() -> list[str]:
    """The names of models.schema.user_rules(), in its order."""
    return [
        RECORD_UNPARSEABLE,
        RECORD_NOT_OBJECT,
        ID_NOT_INTEGER,
        ID_DUPLICATE,
        FIRST_NAME_MISSING,
        EMAIL_INVALID,
        AGE_NOT_INTEGER,
        AGE_OUT_OF_RANGE,
        DEPARTMENT_MISSING,
        DEPARTMENT_UNKNOWN,
        *storage_rule_names(),
    ]


def dlq_reasons() -> list[str]:
    """Every reason a dead-lettered user can carry."""
    return [*user_rule_names(), CSV_MALFORMED]
