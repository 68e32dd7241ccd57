"""What never leaves the source (secrets) and what is masked outside the raw layer (sensitive values): one
table of masks, applied as Polars expressions to a column (`mask_value`) and to JSON text (`mask_sensitive`)
with the same result for the same value, for every source and stage."""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec
import polars as pl

SECRET_FIELDS = ("password",)  # never staged, stored, logged or shipped (a key of exactly this name, at any depth)

SHOWN = 4  # significant characters a mask keeps, the last ones...
SHOWN_FROM = 8  # ...of a value that has at least this many (a shorter one is all stars, one with none is null)
STARS = "****"


@dataclass(frozen=True)
class Mask:
    """A sensitive value's mask: `prefix` + its last SHOWN significant characters (`ignored`: a regex of the
    characters that are not); `keys`: the JSON keys it goes by, at any depth."""

    keys: tuple[str, ...]
    prefix: str
    ignored: str


SSN = Mask(("ssn",), "***-**-", r"\D")  # ***-**-6789
CARD = Mask(("cardNumber", "card_number"), "**** **** **** ", r"\D")  # **** **** **** 1234
IBAN = Mask(("iban",), STARS, r"\s")  # ****1234
EIN = Mask(("ein",), "**-***", r"\D")  # **-***6789 (an EIN is written 12-3456789)
MASKS = (SSN, CARD, IBAN, EIN)
SENSITIVE_FIELDS = tuple(key for mask in MASKS for key in mask.keys)  # kept in the raw layer only


def mask_value(value: pl.Expr, mask: Mask) -> pl.Expr:
    """Text values masked: the one definition of a mask, for columns and JSON text alike. A chain, each step
    reading the one before once (`value` may be costly to work out, and an eager select works out a
    subexpression as often as it occurs): long enough -> prefix and the last ones; else, if any, stars
    (every prefix has 4 characters or more, so the step before never gives something short); else null."""
    prefix = mask.prefix.replace("$", "$$")
    return (
        value.str.replace_all(mask.ignored, "")
        .str.replace(rf"(?s)^.{{{SHOWN_FROM - SHOWN},}}(.{{{SHOWN}}})$", prefix + "${1}")
        .str.replace(rf"(?s)^.{{1,{SHOWN_FROM - 1}}}$", STARS)
        .str.extract(r"(?s)^(.+)$", 1)
    )


# ---------------------------------------------------------------- JSON text

_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^,{}\[\]"\s]+)'  # a JSON string, or a scalar (never an object or array)
_SECRET = "|".join(re.escape(key) for key in SECRET_FIELDS)
# a secret key with its value, and the comma that joined it to a neighbour (before, after, or none)
_SECRET_BEFORE = rf'"(?:{_SECRET})"\s*:\s*{_VALUE}\s*,'
_SECRET_AFTER = rf',\s*"(?:{_SECRET})"\s*:\s*{_VALUE}'
_SECRET_ONLY = rf'"(?:{_SECRET})"\s*:\s*{_VALUE}'
# where JSON text may still hold a secret: a secret key's name, or an escaped ASCII character (a key may be
# spelled with escapes, "pass\u0077ord"). Text without either holds no secret key.
SECRET_TRACE = rf"{_SECRET}|\\u00[0-7][0-9A-Fa-f]"
_TRACE = re.compile(SECRET_TRACE.encode())
CUT = " [cut: a secret may follow]"  # what replaces the rest of text that cannot be parsed, from a trace on


def drop_secrets(json_text: pl.Expr) -> pl.Expr:
    """JSON text with every secret key whose value is a text, number, boolean or null (at any depth) cut out,
    still valid JSON: the fast path for whole records. A secret holding an object or array, or spelled with
    escapes, is left for `without_secrets` (its text still shows a SECRET_TRACE)."""
    return (
        json_text.str.replace_all(_SECRET_BEFORE, "")
        .str.replace_all(_SECRET_AFTER, "")
        .str.replace_all(_SECRET_ONLY, "")
    )


_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])


def without_secrets(record: bytes) -> bytes:
    """A JSON value's text with every secret key dropped at any depth, whatever its value: objects and arrays
    that show a SECRET_TRACE are parsed (escaped keys read as what they spell) and written again, all else
    is kept byte for byte. ValueError when the text is not JSON, or too deeply nested to parse."""
    if not _TRACE.search(record):
        return record
    start = record.lstrip()[:1]
    try:
        if start == b"{":
            return (
                b"{"
                + b",".join(
                    msgspec.json.encode(key) + b":" + without_secrets(bytes(value))
                    for key, value in _OBJECT.decode(record).items()
                    if key not in SECRET_FIELDS
                )
                + b"}"
            )
        if start == b"[":
            return b"[" + b",".join(without_secrets(bytes(value)) for value in _ARRAY.decode(record)) + b"]"
        msgspec.json.decode(record, type=msgspec.Raw)  # a text or number: a value, never a key, if it is JSON
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"not a JSON value: {exc}") from exc
    return record


def cut_secrets(text: bytes) -> bytes:
    """Text that cannot be parsed cut at its first SECRET_TRACE (a secret in it cannot be found by key)."""
    found = _TRACE.search(text)
    return text if found is None else text[: found.start()] + CUT.encode()


def cut_at_secrets(text: pl.Expr) -> pl.Expr:
    """`cut_secrets` as a column expression."""
    return text.str.replace(rf"(?s)(?:{SECRET_TRACE}).*$", CUT.replace("$", "$$"))


def _keyed(key: str) -> str:
    """A key (one: an alternation of keys is ten times slower to search for) and its value: a text, number or
    boolean, or an object or array with none inside (each masked as its JSON text, as a column has it)."""
    return rf'"{key}"\s*:\s*("(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|\{{[^{{}}\[\]]*\}}|\[[^{{}}\[\]]*\])'


def _as_json(value: pl.Expr) -> pl.Expr:
    """Text values as JSON literals (quoted and escaped; null as null)."""
    return pl.struct(value.alias("v")).struct.json_encode().str.strip_prefix('{"v":').str.strip_suffix("}")


def mask_sensitive(json_text: pl.Expr) -> pl.Expr:
    """JSON text with every sensitive value (at any depth) masked by `mask_value`, secrets dropped. A key's
    first value in a record is read, masked and written over each of its values there (a record holding
    one key twice, with two values, shows the first one's mask twice)."""
    out = json_text
    for mask in MASKS:
        for key in mask.keys:  # (read from the text given: `out` twice a step would be worked out 2^n times)
            found = json_text.str.extract(_keyed(key), 1)
            value = pl.concat_str(pl.lit('{"v":'), found, pl.lit("}")).str.json_path_match("$.v")
            masked = _as_json(mask_value(value, mask)).str.replace_all("$", "$$", literal=True)
            out = out.str.replace_all(_keyed(key), pl.lit(f'"{key}":') + masked)
    return drop_secrets(out)


def mask_unparsed(text: pl.Expr) -> pl.Expr:
    """A line that is no JSON object as a JSON string: masked as JSON text as far as its keys can be found,
    and cut at any trace of a secret left (the staged line of an API record holds none; text that cannot be
    parsed cannot show one by key)."""
    return _as_json(cut_at_secrets(mask_sensitive(text)))
