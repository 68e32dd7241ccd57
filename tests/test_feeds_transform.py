"""feeds-etl's transform alone (no Prefect, no database): the rules, the item keys, the DLQ reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tasks.feeds import parse_staged, transform_frame


def _staged(**fields) -> str:
    """One staged line as tasks.extract.feeds writes it."""
    return json.dumps(
        {
            "feed": "f",
            "guid": None,
            "link": None,
            "title": None,
            "summary": None,
            "author": None,
            "categories": [],
            "published_at": None,
        }
        | fields
    )


def test_rules_keys_and_reasons():
    raw = (
        "\n".join(
            [
                _staged(guid=" g1 ", title="  One ", categories=[" a ", "", "b"], published_at="2026-03-01T08:00:00Z"),
                _staged(link="https://x.test/2", title="keyed by link"),
                _staged(guid="g3", summary="neither title nor link"),
                _staged(summary="nothing at all"),
                _staged(title="title only"),
                _staged(guid="g1", title="same guid again"),
                _staged(guid="g1", title="same guid, other feed", feed="other"),
            ]
        ).encode()
        + b"\n"
    )

    processed, dlq = transform_frame(parse_staged(raw))

    assert processed.get_column("item_key").to_list() == ["g1", "https://x.test/2", "g1"]
    first = processed.row(0, named=True)
    assert (first["title"], first["categories"], first["published_at"]) == (
        "One",
        '["a","b"]',
        datetime(2026, 3, 1, 8, tzinfo=UTC),
    )
    assert processed.get_column("item_id").n_unique() == 3  # same guid, different feeds: different items
    assert [set(r) for r in dlq.get_column("reasons").to_list()] == [
        {"title_and_link_missing"},
        {"title_and_link_missing", "key_missing"},
        {"key_missing"},
        {"key_duplicate"},
    ]
    assert dlq.get_column("error_reason").to_list()[1] == "title_and_link_missing; key_missing"
    assert dlq.get_column("record").str.json_path_match("$.summary").to_list()[:2] == [
        "neither title nor link",
        "nothing at all",
    ]
