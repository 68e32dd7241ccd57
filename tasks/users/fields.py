"""The users pipeline's constants: where each staging column is in a DummyJSON record, and the processed
layout."""

from __future__ import annotations

import polars as pl

from models.schema import max_lengths
from models.users import PROCESSED_COLUMNS, RawUser

FAILED = "_failed"  # the rules a row fails, as bits
RAW_ID_CHARS = max_lengths(RawUser)  # raw_users' column lengths: a longer source id is no id there

# flattened column -> path in the DummyJSON record
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "id_text": ("id",),
    "first_name": ("firstName",),
    "last_name": ("lastName",),
    "maiden_name": ("maidenName",),
    "username": ("username",),
    "email": ("email",),
    "phone": ("phone",),
    "age_text": ("age",),
    "gender": ("gender",),
    "birth_date": ("birthDate",),
    "blood_group": ("bloodGroup",),
    "eye_color": ("eyeColor",),
    "university": ("university",),
    "role": ("role",),
    "city": ("address", "city"),
    "state": ("address", "state"),
    "country": ("address", "country"),
    "postal_code": ("address", "postalCode"),
    "department": ("company", "department"),
    "company_name": ("company", "name"),
    "company_title": ("company", "title"),
    "ssn": ("ssn",),
    "card_number": ("bank", "cardNumber"),
    "card_type": ("bank", "cardType"),
    "iban": ("bank", "iban"),
}
FLOAT_FIELDS: dict[str, tuple[str, ...]] = {
    "height": ("height",),
    "weight": ("weight",),
    "latitude": ("address", "coordinates", "lat"),
    "longitude": ("address", "coordinates", "lng"),
}

DUMMYJSON_FIELDS = {**TEXT_FIELDS, **FLOAT_FIELDS}

PROCESSED_SCHEMA: dict[str, pl.DataType] = {
    **{c: pl.String() for c in PROCESSED_COLUMNS},
    "id": pl.Int64(),
    "age": pl.Int64(),
    "height": pl.Float64(),
    "weight": pl.Float64(),
    "latitude": pl.Float64(),
    "longitude": pl.Float64(),
    "record_hash": pl.String(),
    "raw_hash": pl.String(),  # the source record's hash: links a processed row to its raw version
}
