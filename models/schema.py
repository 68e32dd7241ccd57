"""Validation rules for users frames: each a name, a message and a Polars expression that is true when the
row passes. `split` (in tasks.transform) keeps rows passing every rule and sends the rest to the DLQ with
the names of every rule they failed, dataframely-style."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

EMAIL_PATTERN = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
INTEGER_PATTERN = r"^\s*[+-]?\d+(?:\.0+)?\s*$"
MIN_AGE, MAX_AGE = 18, 65


@dataclass(frozen=True)
class Rule:
    name: str
    message: str
    passes: pl.Expr


def _integer_text(col: str) -> pl.Expr:
    return pl.col(col).str.contains(INTEGER_PATTERN).fill_null(False)


def present(col: str) -> pl.Expr:
    """The text column holds something besides white space."""
    return pl.col(col).str.strip_chars().str.len_chars().fill_null(0) > 0


def user_rules() -> list[Rule]:
    """The product's rules, over the staging columns `id_text, first_name, email, age_text, department,
    department_code` (text as received; `department_code` null when not found) and `id_duplicate`."""
    return [
        Rule("id_not_integer", "id is missing or not an integer", _integer_text("id_text")),
        Rule("id_duplicate", "id appears more than once in the batch", ~pl.col("id_duplicate")),
        Rule("first_name_missing", "firstName is missing or empty", present("first_name")),
        Rule("email_invalid", "email is missing or not a valid address",
             pl.col("email").str.strip_chars().str.contains(EMAIL_PATTERN).fill_null(False)),
        Rule("age_not_integer", "age is missing or not an integer", _integer_text("age_text")),
        Rule("age_out_of_range", f"age is outside {MIN_AGE}-{MAX_AGE}",
             ~_integer_text("age_text")
             | pl.col("age_text").cast(pl.Float64, strict=False).is_between(MIN_AGE, MAX_AGE).fill_null(False)),
        Rule("department_missing", "company.department is missing or empty", present("department")),
        Rule("department_unknown", "company.department is not in the departments table",
             ~present("department") | pl.col("department_code").is_not_null()),
    ]
