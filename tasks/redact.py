"""What never leaves the source (secrets) and what is masked outside the raw layer (sensitive values), as
Polars expressions over JSON text: one place for every source and stage."""

from __future__ import annotations

import polars as pl

SECRET_FIELDS = ("password",)  # never staged, stored, logged or shipped
SENSITIVE_FIELDS = ("ssn", "cardNumber", "iban", "ein")  # kept in the raw layer only; masked everywhere else

_SECRET = "|".join(SECRET_FIELDS)
_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^,{}\[\]"]*)'  # a JSON string, or a scalar
# a secret key with its value, and the comma that joined it to a neighbour (before, after, or none)
_SECRET_BEFORE = rf'"(?:{_SECRET})"\s*:\s*{_VALUE}\s*,'
_SECRET_AFTER = rf',\s*"(?:{_SECRET})"\s*:\s*{_VALUE}'
_SECRET_ONLY = rf'"(?:{_SECRET})"\s*:\s*{_VALUE}'
_SENSITIVE = "|".join(SENSITIVE_FIELDS)


def drop_secrets(json_text: pl.Expr) -> pl.Expr:
    """JSON objects as text with every secret key (at any depth) cut out, still valid JSON."""
    return (json_text.str.replace_all(_SECRET_BEFORE, "").str.replace_all(_SECRET_AFTER, "")
            .str.replace_all(_SECRET_ONLY, ""))


def mask_sensitive(json_text: pl.Expr) -> pl.Expr:
    """Sensitive values inside JSON text masked (the last four characters kept), secrets dropped."""
    out = json_text.str.replace_all(rf'"({_SENSITIVE})"\s*:\s*"[^"]*?([^"]{{4}})"', r'"${1}":"****${2}"')
    out = out.str.replace_all(rf'"({_SENSITIVE})"\s*:\s*"[^"]{{0,3}}"', r'"${1}":"****"')
    out = out.str.replace_all(rf'"({_SENSITIVE})"\s*:\s*-?[0-9][0-9.eE+-]*', r'"${1}":"****"')
    return drop_secrets(out)
