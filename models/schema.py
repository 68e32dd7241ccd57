"""Validation rules for users frames: each a name (models/rules.py), a message and a Polars expression that
is true when the row passes. `split` (in tasks.users.transform) keeps rows passing every rule and sends the rest
to the DLQ with the names of every rule they failed, dataframely-style. The rules cover what the target tables
enforce (64-bit ids, the columns' lengths, text PostgreSQL can hold, finite numbers), read from the table
models, so that no row the rules let through is refused by either database."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from sqlmodel import SQLModel

from models import rules as names
from models.rules import MAX_AGE, MIN_AGE, SET_BY_PIPELINE, max_lengths, message
from models.users import UserBase

EMAIL_PATTERN = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
INTEGER_PATTERN = r"^\s*[+-]?\d+(?:\.0+)?\s*$"

# staging column: what a staged line held (a JSON object, other JSON, or no JSON at all); REWRITTEN: an object
# Polars read only once its numbers beyond what a column holds were written as text (judged as any object)
RECORD = "_record"
OBJECT, REWRITTEN, NOT_OBJECT, UNPARSEABLE = "object", "rewritten", "not_object", "unparseable"


@dataclass(frozen=True)
class Rule:
    name: str
    message: str
    passes: pl.Expr
    alone: bool = False  # failed, it is the record's one reason: a record that is no object has no fields to judge


def _integer_text(col: str) -> pl.Expr:
    return pl.col(col).str.contains(INTEGER_PATTERN).fill_null(False)


def integer_value(col: str) -> pl.Expr:
    """Integer text (INTEGER_PATTERN) as a 64-bit integer, read exactly (no float on the way, which would
    change ids beyond 2^53); null when it is no integer or outside the signed 64-bit range."""
    return pl.col(col).str.strip_chars().str.replace(r"\.0+$", "").cast(pl.Int64, strict=False)


def present(col: str) -> pl.Expr:
    """The text column holds something besides white space."""
    return pl.col(col).str.strip_chars().str.len_chars().fill_null(0) > 0


def text_columns(model: type[SQLModel] = UserBase) -> list[str]:
    """The staging columns the model's text columns are made of (a masked column from the value it masks)."""
    return [
        name.removesuffix("_masked")
        for name, field in model.model_fields.items()
        if field.annotation in (str, str | None) and name not in SET_BY_PIPELINE
    ]


def number_columns(model: type[SQLModel] = UserBase) -> list[str]:
    return [name for name, field in model.model_fields.items() if field.annotation in (float, float | None)]


def record_rules() -> list[Rule]:
    """Over `RECORD`: a staged line that is not a JSON object fails one of these, and only that."""
    return [
        Rule(
            names.RECORD_UNPARSEABLE,
            message(names.RECORD_UNPARSEABLE),
            pl.col(RECORD) != UNPARSEABLE,
            alone=True,
        ),
        Rule(
            names.RECORD_NOT_OBJECT,
            message(names.RECORD_NOT_OBJECT),
            pl.col(RECORD) != NOT_OBJECT,
            alone=True,
        ),
    ]


def storage_rules() -> list[Rule]:
    """What the tables enforce, over the values as they would be stored: `id` (the integer read from
    `id_text`), the text columns (stripped or lowercased as stored) and the number columns."""
    lengths = [
        Rule(
            names.too_long(col),
            message(names.too_long(col)),
            (pl.col(col).str.len_chars() <= n).fill_null(True),
        )
        for col, n in max_lengths().items()
    ]
    return [
        Rule(
            names.ID_OUT_OF_RANGE,
            message(names.ID_OUT_OF_RANGE),
            ~_integer_text("id_text") | pl.col("id").is_not_null(),
        ),
        *lengths,
        Rule(
            names.TEXT_CONTAINS_NUL,
            message(names.TEXT_CONTAINS_NUL),
            ~pl.concat_str(text_columns(), ignore_nulls=True).str.contains("\x00", literal=True).fill_null(False),
        ),
        Rule(
            names.NUMBER_NOT_FINITE,
            message(names.NUMBER_NOT_FINITE),
            pl.all_horizontal(pl.col(number_columns()).is_finite().fill_null(True)),
        ),
    ]


def user_rules() -> list[Rule]:
    """The product's rules, over the staging columns `id_text, first_name, email, age_text, department,
    department_code` (text as received, `first_name` stripped, `email` stripped and lowercased, `department`
    stripped; `department_code` null when not found), `id_duplicate`, `RECORD` and those `storage_rules`
    reads."""
    return [
        *record_rules(),
        Rule(names.ID_NOT_INTEGER, message(names.ID_NOT_INTEGER), _integer_text("id_text")),
        Rule(names.ID_DUPLICATE, message(names.ID_DUPLICATE), ~pl.col("id_duplicate")),
        Rule(names.FIRST_NAME_MISSING, message(names.FIRST_NAME_MISSING), present("first_name")),
        Rule(
            names.EMAIL_INVALID,
            message(names.EMAIL_INVALID),
            pl.col("email").str.strip_chars().str.contains(EMAIL_PATTERN).fill_null(False),
        ),
        Rule(names.AGE_NOT_INTEGER, message(names.AGE_NOT_INTEGER), _integer_text("age_text")),
        Rule(
            names.AGE_OUT_OF_RANGE,
            message(names.AGE_OUT_OF_RANGE),
            ~_integer_text("age_text") | pl.col("age").is_between(MIN_AGE, MAX_AGE).fill_null(False),
        ),
        Rule(names.DEPARTMENT_MISSING, message(names.DEPARTMENT_MISSING), present("department")),
        Rule(
            names.DEPARTMENT_UNKNOWN,
            message(names.DEPARTMENT_UNKNOWN),
            ~present("department") | pl.col("department_code").is_not_null(),
        ),
        *storage_rules(),
    ]


def feed_item_rules() -> list[Rule]:
    """Rules over the staging columns `title, link, item_key` (text, trimmed, empty as null) and
    `key_duplicate` (the key was already seen earlier in the same feed document)."""
    return [
        Rule("title_and_link_missing", "the item has neither a title nor a link", present("title") | present("link")),
        Rule("key_missing", "the item has neither a guid nor a link to key it by", present("item_key")),
        Rule("key_duplicate", "the item's guid (or link) appears earlier in the same feed", ~pl.col("key_duplicate")),
    ]
