"""Staged JSONL as frames: a row per line, the records' fields parsed in one vectorised pass. A span that one
pass cannot read (a line that is no JSON, or no object, a number no column type holds, types inference
cannot unite) is read line by line instead, so that no line can stop the others: each bad line becomes a
row that says what it held (`RECORD`), for the rules to send to the DLQ."""

from __future__ import annotations

import functools
import io
import json
import math
import re
from collections.abc import Iterator
from typing import cast

import msgspec
import polars as pl

from models.schema import NOT_OBJECT, OBJECT, RECORD, REWRITTEN, UNPARSEABLE

LINE = "_raw"
CHECKED_TYPES = (pl.String, pl.Int64, pl.Float64, pl.Boolean, pl.Struct)
INT128_DIGITS = 39  # digits of the largest 128-bit integer
_HUGE = re.compile(rf"\d{{{INT128_DIGITS}}}")  # a number maybe beyond 128 bits, which Polars cannot read
_DECODE = msgspec.json.Decoder().decode


def read_lines(data: bytes, name: str = LINE) -> pl.DataFrame:
    """JSONL bytes as one text column, a row per line, untouched (JSON escapes control characters, so the
    unit separator never occurs inside a line; bytes that are not UTF-8 read as U+FFFD, an empty line as "")."""
    if not data or data.isspace():  # (strip() would copy the whole span)
        return pl.DataFrame(schema={name: pl.String})
    return pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        separator="\x1f",
        quote_char=None,
        encoding="utf8-lossy",
        new_columns=[name],
        schema={name: pl.String},
        truncate_ragged_lines=True,
    ).fill_null("")


def parse_raw(data: bytes, like: pl.Schema | None = None) -> pl.DataFrame:
    """JSONL bytes -> one row per line: the original line in `_raw`, what it held in `RECORD` and the parsed
    top-level fields. Types are inferred over the whole span, so a field whose type drifts becomes text, never
    an error. `like`: the fields an earlier span of the same source was inferred to have; the span is parsed
    with them in one pass when that gives exactly what inferring would (`parse_like`). A span one pass cannot
    read is read line by line (`parse_lines`)."""
    lines = read_lines(data)
    if lines.height == 0:
        return lines
    parsed = parse_like(data, lines.get_column(LINE), like) if like else None
    if parsed is None:
        try:
            parsed = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
        except pl.exceptions.PolarsError:
            parsed = None
    if parsed is None or parsed.height != lines.height:
        return parse_lines(lines.get_column(LINE))
    return parsed.with_columns(lines.get_column(LINE), pl.lit(OBJECT).alias(RECORD))


def _types(schema: pl.Schema | dict) -> Iterator[pl.DataType]:
    for dtype in schema.values():
        yield dtype
        if isinstance(dtype, pl.Struct):
            yield from _types({f.name: f.dtype for f in dtype.fields})


def _fields(frame: pl.DataFrame) -> Iterator[pl.Series]:
    """Every column of a parsed frame and every field of its structs, nested ones too (a struct's fields
    are null where the struct is)."""
    for column in frame.iter_columns():
        yield column
        if isinstance(column.dtype, pl.Struct):
            yield from _fields(column.struct.unnest())


def parse_like(data: bytes, lines: pl.Series, schema: pl.Schema) -> pl.DataFrame | None:
    """The span (its `lines`) parsed in one pass with `schema`, another span's inferred fields, if that is
    exactly what inferring its own would give; else None. Inferring reads every record twice: 1.4 s for
    100k DummyJSON users, against 0.7 s with the fields given and 0.1 s for the checks below.

    Polars' parse with a schema raises on a value of another type, except that it drops keys the schema
    lacks, reads an absent key as null, takes any value as text for a String field and an integer for a
    Float64 one. So the parse stands only if the span's keys (`":`) are as many as the fields parsed
    non-null and its text values (`":"`) as many as the String fields parsed non-null (a null value or a
    stray `":` in a text sends the span to inference too), every field occurs in it, and every Float64
    field has a fraction somewhere in it (else inference would say Int64). A line holds at least as many
    `":` as fields parsed non-null, so the counts agree on every line when they agree in all; JSON with a
    space before its colons goes to inference."""
    if not all(isinstance(dtype, CHECKED_TYPES) for dtype in _types(schema)):
        return None
    try:
        parsed = pl.read_ndjson(io.BytesIO(data), schema=schema)
    except pl.exceptions.PolarsError:
        return None
    if parsed.height != lines.len():
        return None
    fields = list(_fields(parsed))
    present = [f.len() - f.null_count() for f in fields]
    texts = sum(n for n, f in zip(present, fields, strict=True) if f.dtype == pl.String)
    text = pl.col("l")
    keys, strings = (
        lines.to_frame("l")
        .select(
            text.str.count_matches('":', literal=True).sum().alias("keys"),
            text.str.count_matches('":"', literal=True).sum().alias("texts"),
        )
        .row(0)
    )
    if 0 in present or keys != sum(present) or strings != texts:
        return None
    if not all((f != f.floor()).any() for f in fields if f.dtype == pl.Float64):
        return None
    return parsed


# ---------------------------------------------------------------- line by line, for a span one pass cannot read


def _int_or_text(digits: str) -> int | str:
    """A JSON integer beyond 128 bits stays its text (Polars reads up to 128; the rules judge it)."""
    value = int(digits) if len(digits.lstrip("-")) <= INT128_DIGITS else None
    return value if value is not None and -(2**127) <= value < 2**127 else digits


def _float_or_text(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text  # 1e999: its text, read back as infinite by the rules


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _first_wins(pairs: list[tuple]) -> dict:
    """A key given twice keeps its first value, as Polars' parse does."""
    out: dict = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _judged(line: str) -> tuple[str, dict | None, str | None]:
    """What a line holds, and for a JSON object its value and a text of it Polars can read: the line itself,
    or, when it holds a number Polars cannot (beyond 128 bits, or a double), the value written again with
    such numbers as their text."""
    if not _HUGE.search(line):
        try:
            value = _DECODE(line)
            return (OBJECT, value, line) if isinstance(value, dict) else (NOT_OBJECT, None, None)
        except (msgspec.DecodeError, RecursionError):
            pass
    texts = []  # the numbers read as text

    def number(read, text: str) -> object:
        value = read(text)
        if isinstance(value, str):
            texts.append(text)
        return value

    try:
        value = json.loads(
            line,
            parse_int=functools.partial(number, _int_or_text),
            parse_constant=_not_json,
            parse_float=functools.partial(number, _float_or_text),
            object_pairs_hook=_first_wins,
        )
    except (ValueError, RecursionError):  # (nested deeper than Python reads)
        return UNPARSEABLE, None, None
    if not isinstance(value, dict):
        return NOT_OBJECT, None, None
    return (REWRITTEN, value, json.dumps(value)) if texts else (OBJECT, value, line)


def _shape(value: object) -> object:
    """A JSON value's type as plain data, cheap to compare and hash: a name, ("list", its items' shape) or
    ("struct", ((key, shape), ...))."""
    if isinstance(value, dict):
        return "struct", tuple((key, _shape(v)) for key, v in value.items())
    if isinstance(value, list):
        return "list", functools.reduce(_united, dict.fromkeys(map(_shape, value)), _NULL_SHAPE)
    if type(value) is int and not -(2**63) <= value < 2**63:
        return "str"  # read as its text (an Int64 column cannot hold it)
    return "null" if value is None else _SCALARS.get(type(value), "str")


_SCALARS = {bool: "bool", int: "int", float: "float"}
_NULL_SHAPE: object = "null"
_EMPTY_STRUCT: object = ("struct", ())
_DTYPES = {"null": pl.Null(), "bool": pl.Boolean(), "int": pl.Int64(), "float": pl.Float64(), "str": pl.String()}


def _united(a: object, b: object) -> object:
    """One shape for values of shapes `a` and `b`: structs field by field, whole and fractional numbers as
    fractions, any other two as text (where inference gives up on a struct beside a list, say)."""
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0] == "struct":
        fields = dict(a[1])
        for key, shape in b[1]:
            fields[key] = _united(fields[key], shape) if key in fields else shape
        return "struct", tuple(fields.items())
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0] == "list":
        return "list", _united(a[1], b[1])
    return "float" if {a, b} == {"int", "float"} else "str"


def _dtype(shape: object) -> pl.DataType:
    if not isinstance(shape, tuple):
        assert isinstance(shape, str)  # (a scalar's shape is its name)
        return _DTYPES[shape]
    kind, inner = shape
    return pl.Struct({key: _dtype(s) for key, s in inner}) if kind == "struct" else pl.List(_dtype(inner))


def _read(text: str, schema: pl.Schema | None = None) -> pl.DataFrame:
    if not text:
        return pl.DataFrame(schema=schema)
    return pl.read_ndjson(io.BytesIO(text.encode()), schema=schema, infer_schema_length=None)


def _objects(texts: list[str], values: list[dict]) -> tuple[pl.DataFrame, list[bool]]:
    """The objects' texts parsed: in one pass, inferring; else with their types united by hand; else each on
    its own with those types. Returns the frame and which objects it holds (all, unless one cannot be read)."""
    read = [True] * len(texts)
    try:
        return _read("\n".join(texts)), read
    except pl.exceptions.PolarsError:
        pass
    shapes: dict[object, None] = {}  # each distinct shape once (most records share theirs)
    for i, value in enumerate(values):
        try:
            shapes[_shape(value)] = None
        except RecursionError:
            read[i] = False
    struct = _dtype(functools.reduce(_united, shapes, _EMPTY_STRUCT))
    assert isinstance(struct, pl.Struct)  # (united with a struct: a struct)
    schema = pl.Schema(struct.to_schema())
    kept = [text for text, ok in zip(texts, read, strict=True) if ok]
    try:
        return _read("\n".join(kept), schema), read
    except pl.exceptions.PolarsError:
        pass
    frames = []
    for i, text in enumerate(texts):
        if read[i]:
            try:
                frames.append(_read(text, schema))
            except pl.exceptions.PolarsError:
                read[i] = False
    return (pl.concat(frames) if frames else pl.DataFrame(schema=schema)), read


def parse_lines(lines: pl.Series) -> pl.DataFrame:
    """`parse_raw`'s frame for lines one pass could not read, judged one by one (per-line Python, for such a
    span only): each JSON object read with numbers beyond 64 bits or a double kept as their text, the
    objects parsed together (`_objects`), every other line a row of nulls saying what it held
    (`NOT_OBJECT`, `UNPARSEABLE`)."""
    judged = [_judged(line) for line in lines]
    kinds = [kind for kind, _, _ in judged]
    at = [i for i, kind in enumerate(kinds) if kind in (OBJECT, REWRITTEN)]
    # (an object's line has both its text and its value)
    texts, values = cast(list[str], [judged[i][2] for i in at]), cast(list[dict], [judged[i][1] for i in at])
    parsed, read = _objects(texts, values) if at else (pl.DataFrame(), [])
    for i, ok in zip(at, read, strict=True):
        if not ok:
            kinds[i] = UNPARSEABLE
    if not parsed.width:
        return pl.DataFrame([lines.alias(LINE), pl.Series(RECORD, kinds, pl.String)])
    rows, n = [], 0  # each line's row in `parsed`, or the row of nulls after its last
    for kind in kinds:
        held = kind in (OBJECT, REWRITTEN)
        rows.append(n if held else parsed.height)
        n += held
    frame = pl.concat([parsed, parsed.clear(1)])[rows]
    return frame.with_columns(lines.alias(LINE), pl.Series(RECORD, kinds, pl.String))
