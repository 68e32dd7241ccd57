"""GET /users?search= on real SQLite and PostgreSQL, served by the search index of migration 0004 (FTS5 trigrams,
pg_trgm), answers as a case-insensitive substring search computed here in Python: every user whose first name,
last name, email or username holds the text, on awkward text (LIKE's wildcards and escape, quotes, accents,
one to many characters), with the other filters, in every sort, over cursor and offset pages, with the total.

"Case-insensitive" is what each database did before the index, kept: SQLite's LIKE folds ASCII letters only
(É and é differ), PostgreSQL's ILIKE folds every letter its LC_CTYPE knows, one character at a time (under a
UTF-8 locale É is é, ẞ is ß, the Kelvin sign is k, and Turkish İ is i; ß is never "ss")."""

from __future__ import annotations

import string
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.main import create_app
from models.db import engine_for
from models.migrate import upgrade
from models.users import PROCESSED_COLUMNS, ProcessedUser
from tasks.users.persist import upsert_processed
from tests.conftest import create_pg_database, drop_pg_database, migrated

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
KELVIN = "\u212a"
# (first name, last name, email, username); None where the column is null
PEOPLE = [
    ("Ava", "Abara", "ava.abara1@example.test", "avaaba1"),
    ("AVA", "Brandt", "AVA.BRANDT@EXAMPLE.TEST", "AVABRA2"),
    ("Dava", None, "dava@ex.test", None),
    ("Java", "Script", "java_script@ex.test", "java_script"),
    ("Ava", "Invalid", "ava.invalid@ex.test", "avainv"),
    ("Zoë", "Ëlle", "zoe@ex.test", "zoë"),
    ("ÉMILE", "Zola", "emile@ex.test", "ÉMILE7"),
    ("émile", "Deleted", "emile.d@ex.test", "émile8"),
    ("Straße", "Weiß", "strasse@ex.test", "STRASSE"),
    ("GROẞ", "Maß", "gross@ex.test", "großmaß"),
    ("İpek", "Yılmaz", "ipek@ex.test", "İPEK"),
    ("ipek", "IŞIK", "isik@ex.test", "ıpek"),
    (f"{KELVIN}elvin", "Scale", "kelvin@ex.test", "kk"),
    ("Sean", "O'Brien", "o'brien@ex.test", "o'b"),
    ('Quote"Man', 'Say "Hi"', "quote@ex.test", 'q"m'),
    ("100%", "Sure_Thing", "100%_sure@ex.test", "100%_"),
    ("Per%cent", "Under_score", "per%cent@ex.test", "under_score"),
    ("Back\\slash", "Path\\Name", "back\\slash@ex.test", "c:\\users"),
    ("Ana", "Silva", "ana.silva@example.test", "ana_s"),
    ("Anna", "Avalon", "anna@avalon.test", "annaav"),
    ("Björk", "Guðmundsdóttir", "bjork@ex.test", "björk"),
    ("Σωκράτης", "ΣΟΦΟΣ", "socrates@ex.test", "σοφός"),
    ("李", "小龙", "bruce@ex.test", "李小龙"),
    ("A", "B", "a@b.c", "ab"),
    ("Mary Ann", "Van der Berg", "mary.ann@ex.test", "mary ann"),
    ("%", "_", "pct@ex.test", "\\"),
    ("Ava", "Nakamura", "ava.n@ex.test", "avanak"),
    ("Olivia", "Avery", "olivia.avery@example.test", None),
    *((f"Xena{i}", f"Filler{i}", f"xena{i}@example.test", f"xena{i}") for i in range(12)),
]
INVALID_IDS, DELETED_IDS = (5, 11), (8, 20)
DEPARTMENTS = ["Engineering", "Legal", "Sales"]
TERMS = [
    # one and two characters: no trigram in them
    *["%", "_", "\\", "'", '"', "a", "A", "é", "É", "ß", "ẞ", "İ", "i", "ı", "k", KELVIN, "ë", "李"],
    *["av", "AV", "ss", "o'", '"h', "%_", "\\s", "_s", "  ", "小龙"],
    # three and more
    *["ava", "AVA", "Ava", "émi", "ÉMI", "Émile", "straße", "STRASSE", "grOß", "GROẞ", "maß", "MASS"],
    *["ipek", "İPEK", "İpek", "IŞIK", "ışık", "kelvin", f"{KELVIN}ELVIN", "o'brien", 'say "hi"', '"hi"'],
    *['q"m', "100%", "100%_", "%_s", "r_s", "under_", "_score", "\\slash", "c:\\", "h\\n", "σοφ", "ΣΟΦ"],
    *["ΣΩΚ", "李小龙", "mary ann", "an v", "zzzz", "example", ".test", "@ex.", "ava.abara1@example.test"],
    *["%%%", "___", "\\\\", "'; DROP TABLE processed_users; --", "x" * 200, "avaaba1x"],
]
FILTERS = [
    {},
    {"department": "Engineering"},
    {"gender": "female", "min_age": 30},
    {"department": "Legal", "gender": "male", "max_age": 50},
]
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def person(uid: int) -> dict:
    first, last, email, username = PEOPLE[uid - 1]
    status = "invalid" if uid in INVALID_IDS else "deleted" if uid in DELETED_IDS else "current"
    return {
        "id": uid,
        "first_name": first,
        "last_name": last,
        "email": email,
        "username": username,
        "age": 20 + uid * 7 % 40,
        "gender": "female" if uid % 2 else "male",
        "department": DEPARTMENTS[uid % 3],
        "department_code": DEPARTMENTS[uid % 3][:3].upper(),
        "source": "dummyjson",
        "record_hash": f"h{uid}",
        "first_seen_at": T0,
        "updated_at": T0 + timedelta(minutes=uid % 4),
        "run_id": "run-1",
        "status": status,
    }


def fold(text: str, dialect: str) -> str:
    """The database's lowering: SQLite's ASCII letters; glibc's towlower on PostgreSQL (one character for
    one: Python's lower() of İ is two)."""
    if dialect == "sqlite":
        return text.translate(ASCII_LOWER)
    return "".join("i" if c == "İ" else c.lower() if len(c.lower()) == 1 else c for c in text)


def expected(users: list[dict], term: str, filters: dict, dialect: str) -> list[int]:
    needle = fold(term.strip(), dialect)
    return [
        u["id"]
        for u in users
        if u["status"] == "current"
        and any(
            u[c] is not None and needle in fold(u[c], dialect) for c in ("first_name", "last_name", "email", "username")
        )
        and all(
            u["age"] >= v if k == "min_age" else u["age"] <= v if k == "max_age" else u[k] == v
            for k, v in filters.items()
        )
    ]


@pytest.fixture(scope="module", params=["sqlite-kept", "sqlite-read", "postgresql-kept", "postgresql-read"])
def search_db(request, tmp_path_factory) -> Iterator[tuple[str, bool]]:
    """A database of each kind holding PEOPLE (written as any client writes: the index keeps itself); pages
    served from the kept matches, or read from the table by the statements (none kept)."""
    pg = request.param.startswith("postgresql")
    url = migrated(create_pg_database("sluice_search") if pg else f"sqlite:///{tmp_path_factory.mktemp('s')}/s.db")
    try:
        with engine_for(url).begin() as conn:
            conn.execute(sa.insert(ProcessedUser.__table__), [person(uid) for uid in range(1, len(PEOPLE) + 1)])
            if pg:
                lowered = conn.exec_driver_sql("SELECT lower('ÉİẞK\u212a')").scalar_one()
                assert lowered == "éißkk", f"these tests assume a UTF-8 LC_CTYPE on PostgreSQL (lower gave {lowered})"
        yield url, request.param.endswith("kept")
    finally:
        engine_for(url).dispose()
        if pg:
            drop_pg_database(url)


@pytest.fixture
def search_url(search_db) -> str:
    return search_db[0]


@pytest.fixture
def client(search_db, settings_env, monkeypatch) -> Iterator[TestClient]:
    from api import users_matches

    url, kept = search_db
    if not kept:  # (a database of its own: its totals and matches are cached apart)
        monkeypatch.setattr(users_matches, "MATCHES_MAX", 0)
    settings_env(database_url=url, api_key=None)
    with TestClient(create_app()) as c:
        yield c


def ids(client: TestClient, params: dict) -> tuple[list[int], int]:
    r = client.get("/users", params=params)
    assert r.status_code == 200, r.text
    return [u["id"] for u in r.json()["data"]], r.json()["total"]


def walk(client: TestClient, params: dict) -> list[int]:
    got, cursor = [], None
    while True:
        r = client.get("/users", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        got += [u["id"] for u in r.json()["data"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return got


@pytest.mark.parametrize("term", TERMS)
def test_search_answers_as_a_substring_search_in_python(client, search_url, term):
    dialect = sa.make_url(search_url).get_backend_name()
    users = [person(uid) for uid in range(1, len(PEOPLE) + 1)]
    for filters in FILTERS:
        want = expected(users, term, filters, dialect)
        assert ids(client, {**filters, "search": term, "page_size": 500}) == (want, len(want)), filters
    want = expected(users, term, {}, dialect)
    assert walk(client, {"search": term, "page_size": 2, "order": "desc"}) == want[::-1]
    by_age = sorted(want, key=lambda uid: (users[uid - 1]["age"], uid))
    assert walk(client, {"search": term, "page_size": 3, "sort": "age"}) == by_age
    offset = [
        i
        for p in range(1, len(want) // 3 + 2)
        for i in ids(client, {"search": term, "page_size": 3, "page": p, "sort": "age"})[0]
    ]
    assert offset == by_age
    by_name = walk(client, {"search": term, "page_size": 2, "sort": "last_name", "order": "desc"})
    assert sorted(by_name) == want and len(by_name) == len(set(by_name))
    by_time = walk(client, {"search": term, "page_size": 4, "sort": "updated_at"})
    assert by_time == sorted(want, key=lambda uid: (users[uid - 1]["updated_at"], uid))
    pages = range(1, len(want) // 3 + 2)
    assert [i for p in pages for i in ids(client, {"search": term, "page_size": 3, "page": p, "order": "desc"})[0]] == (
        want[::-1]
    )


def processed(rows: list[dict]) -> pl.DataFrame:
    """Rows as transform stages them for persist: the processed columns, their hash, when observed."""
    return pl.DataFrame(
        [{c: r.get(c) for c in (*PROCESSED_COLUMNS, "record_hash")} | {"_as_of": r["_as_of"]} for r in rows],
        schema={
            **dict.fromkeys(PROCESSED_COLUMNS, pl.String()),
            "id": pl.Int64(),
            "age": pl.Int64(),
            "record_hash": pl.String(),
            "_as_of": pl.Datetime("us", "UTC"),
        },
    )


def test_the_index_follows_the_pipelines_writes(database_url, settings_env, monkeypatch):
    """Users inserted and updated by persist's bulk statements, made invalid, deleted: each search answers
    from what is stored now."""
    from api import crud_users

    monkeypatch.setattr(crud_users, "VERSION_CHECK_SECONDS", 0.0)  # writes follow each other within milliseconds
    settings_env(database_url=database_url, api_key=None)
    engine = engine_for(database_url)

    def persist(rows: list[dict], minutes: int) -> None:
        when = T0 + timedelta(minutes=minutes)
        with engine.begin() as conn:
            upsert_processed(conn, processed([r | {"_as_of": when} for r in rows]), run_id=f"run-{minutes}", now=when)

    people = [person(uid) | {"status": "current"} for uid in (1, 2, 3, 4, 14)]
    persist(people, 1)
    with TestClient(create_app()) as c:
        assert ids(c, {"search": "ava"}) == ([1, 2, 3, 4], 4)
        renamed = [people[0] | {"first_name": "Olga", "email": "olga@ex.test", "username": "olga", "record_hash": "x"}]
        persist(renamed + [{**people[4], "last_name": "Avaline", "record_hash": "y"}], 2)
        assert ids(c, {"search": "ava"}) == ([2, 3, 4, 14], 4)
        assert ids(c, {"search": "OLGA"}) == ([1], 1) and ids(c, {"search": "avaaba1"}) == ([], 0)
        assert ids(c, {"search": "ABARA"}) == ([1], 1)  # the column left as it was
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE processed_users SET status = 'invalid' WHERE id = 2")
            conn.exec_driver_sql("DELETE FROM processed_users WHERE id = 3")
        assert ids(c, {"search": "ava"}) == ([4, 14], 2)
        assert ids(c, {"search": "ava", "status": "invalid"}) == ([2], 1)
        persist([people[1], people[2]], 3)  # current again, and back
        assert ids(c, {"search": "ava", "sort": "age"})[1] == 4 == len(walk(c, {"search": "ava", "page_size": 1}))
        # a cursor whose user no longer matches still leads on to the users after it
        first = c.get("/users", params={"search": "ava", "page_size": 2}).json()
        assert [u["id"] for u in first["data"]] == [2, 3]
        persist([people[2] | {"first_name": "Dora", "email": "dora@ex.test", "record_hash": "z"}], 4)
        after = c.get("/users", params={"search": "ava", "page_size": 2, "cursor": first["next_cursor"]}).json()
        assert [u["id"] for u in after["data"]] == [4, 14] and after["total"] == 3


def test_a_database_filled_before_the_index_gets_it_on_upgrade(new_url, settings_env):
    """A database at revision 0003 with users in it: `make migrate` indexes them, and writes after it are
    indexed as they happen."""
    upgrade(new_url, "0003")
    engine = sa.create_engine(new_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(ProcessedUser.__table__), [person(uid) for uid in range(1, 25)])
    engine.dispose()
    upgrade(new_url)
    settings_env(database_url=new_url, api_key=None)
    with engine_for(new_url).begin() as conn:
        conn.execute(sa.insert(ProcessedUser.__table__), [person(uid) for uid in range(25, len(PEOPLE) + 1)])
    try:
        with TestClient(create_app()) as c:
            assert ids(c, {"search": "ava"}) == ([1, 2, 3, 4, 27], 5)
            assert ids(c, {"search": "straße"}) == ([9], 1) and ids(c, {"search": "xena3"}) == ([32], 1)
    finally:
        engine_for(new_url).dispose()
