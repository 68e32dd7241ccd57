"""A page's records as staged JSONL lines: secrets dropped, one record a line."""

from __future__ import annotations

from typing import BinaryIO

import msgspec
import orjson
import polars as pl

from tasks.redact import SECRET_TRACE, cut_secrets, drop_secrets, without_secrets


def _encoded(user: object) -> bytes:
    """A record's JSON text: as the source sent it, or a record given as Python values encoded."""
    if isinstance(user, msgspec.Raw):
        return bytes(user)
    try:
        return orjson.dumps(user)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, say
        return msgspec.json.encode(user)


def _mended(user: object) -> str:
    """A record whose text still shows a trace of a secret with its secrets dropped by key (`without_secrets`);
    one that cannot be parsed is cut at its first trace, for transform to reject."""
    text = _encoded(user).decode("utf-8", "replace").encode()
    try:
        return without_secrets(text).decode()
    except ValueError:
        return cut_secrets(text).decode()


def _clean_lines(users: list) -> pl.DataFrame:
    """Records (raw JSON texts, or Python values) as one text column with every secret key dropped, at any
    depth and whatever its value, and line breaks flattened. Column operations cut out secrets holding a
    text, number, boolean or null; the few lines whose text still shows a trace of one after that (a secret
    holding an object, a key spelled with escapes) are mended one by one; text that is not UTF-8 is read with
    U+FFFD in place of what is not."""
    encoded = [_encoded(u) for u in users]
    try:
        texts = pl.Series("r", encoded, dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.ComputeError:  # a text that is not UTF-8: the page's texts decoded one by one instead
        texts = pl.Series("r", [text.decode("utf-8", "replace") for text in encoded], dtype=pl.String)
    lines = texts.to_frame().select(drop_secrets(pl.col("r"))).to_series()
    traced = lines.to_frame().select(pl.col("r").str.contains(SECRET_TRACE)).to_series()
    if traced.any():
        at = traced.arg_true()
        lines = lines.scatter(at, pl.Series([_mended(users[i]) for i in at.to_list()], dtype=pl.String))
    return lines.to_frame().select(pl.col("r").str.replace_all(r"[\r\n]+", " "))


def write_lines(fh: BinaryIO, users: list) -> None:
    """Records appended to `fh` as JSONL, written from the frame itself (one column, never quoted): no copy of
    the page as one Python string and another as bytes."""
    if users:
        _clean_lines(users).write_csv(fh, include_header=False, quote_style="never")
