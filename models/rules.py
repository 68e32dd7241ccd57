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
MIN_AGE, MAX_AGE = 18, 65

# what each rule means, in the words a person reading the DLQ needs (models/schema.py's messages)
MESSAGES: dict[str, str] = {
    RECORD_UNPARSEABLE: "the staged line is not JSON (invalid or cut short)",
    RECORD_NOT_OBJECT: "the record is JSON but not an object (a text, number, array or null)",
    ID_NOT_INTEGER: "id is missing or not an integer",
    ID_DUPLICATE: "id appears more than once in the batch",
    FIRST_NAME_MISSING: "firstName is missing or empty",
    EMAIL_INVALID: "email is missing or not a valid address",
    AGE_NOT_INTEGER: "age is missing or not an integer",
    AGE_OUT_OF_RANGE: f"age is outside {MIN_AGE}-{MAX_AGE}",
    DEPARTMENT_MISSING: "company.department is missing or empty",
    DEPARTMENT_UNKNOWN: "company.department is not in the departments table",
    ID_OUT_OF_RANGE: "id is an integer outside the signed 64-bit range",
    TEXT_CONTAINS_NUL: "a text value holds a NUL character (\\u0000), which PostgreSQL cannot store",
    NUMBER_NOT_FINITE: "height, weight, latitude or longitude is NaN, infinite or beyond a double",
    CSV_MALFORMED: "the CSV line could not be read as a record (wrong number of fields or bad quoting)",
}


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


def message(name: str) -> str:
    """What the rule `name` checks; a length rule's limit read from the table model."""
    if name in MESSAGES:
        return MESSAGES[name]
    column = name.removesuffix("_too_long")
    limit = max_lengths().get(column)
    return f"{column} is longer than {limit} characters" if limit and column != name else "an unknown rule"


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
