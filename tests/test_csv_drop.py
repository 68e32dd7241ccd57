"""The users CSV drop through the real flow: processed once per content, malformed files to the DLQ with
file and line, newest record wins against the API."""

from __future__ import annotations

import asyncio
import os
import time

import polars as pl
import pytest
from sqlalchemy import text

from dev.sample_api import DummyJsonServer
from flows.users_etl import users_etl
from models.db import engine_for
from tasks.extract.csv_drop.reader import CsvFormatError, read_users_csv
from tests.servers.dummyjson import load_real_users

HEADER = "id,first_name,last_name,email,age,gender,department,company,title,city,country,password\n"


def rows(url, sql):
    with engine_for(url).connect() as conn:
        return conn.execute(text(sql)).all()


def csv_rows(users, start_id=5000):
    lines = []
    for i, u in enumerate(users):
        lines.append(
            ",".join(
                [
                    str(start_id + i),
                    u["firstName"],
                    u["lastName"],
                    f"csv{start_id + i}@example.com",
                    str(u["age"]),
                    u["gender"],
                    u["company"]["department"],
                    f'"{u["company"]["name"]}"',
                    u["company"]["title"],
                    u["address"]["city"],
                    u["address"]["country"],
                    u["password"],
                ]
            )
        )
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'id,first_name,email,age,department\n1,Ann,a@x.com,30,Legal\n2,"Bo,b@x.com,31,Sales\n', "users.csv line"),
        (
            b"id,first_name,email,age,department\n1,Ann,a@x.com,30,Legal\n2,B\xffo,b@x.com,31,Sales\n",
            "users.csv line 3: not UTF-8",
        ),
        (b"id,first_name,email,age,department\n1,Ann,a@x.com,30,Legal,surplus\n", "users.csv line 2: 6 fields"),
        (b"1,Ann,a@x.com,30,Legal\n", "users.csv line 1: header lacks required column(s)"),
        (b"", "users.csv line 1: empty file"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "users.csv"
    path.write_bytes(content)
    with pytest.raises(CsvFormatError) as err:
        read_users_csv(path)
    assert message in str(err.value)


def test_password_column_is_dropped(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text(HEADER + csv_rows(load_real_users()[:3]))
    df = read_users_csv(path)
    assert "password" not in df.columns and df.get_column("_line").to_list() == [2, 3, 4]


@pytest.mark.usefixtures("prefect_server")
def test_csv_drop_end_to_end(settings_env, database_url, tmp_path):
    url = database_url
    drop = tmp_path / "drop"
    drop.mkdir()
    settings_env(database_url=url, users_csv_dir=drop)
    real = load_real_users()
    good = drop / "a_users.csv"
    good.write_text(HEADER + csv_rows(real[:30]))
    (drop / "b_broken.csv").write_bytes(b"id,first_name,email,age,department\n1,Ann,a@x.com,30,Legal,x\n")
    with DummyJsonServer(real[:20]) as server:
        first = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        assert first["counts"]["inserted"] == 50
        assert first["sources"]["csv"]["inserted"] == 30 and first["sources"]["dummyjson"]["inserted"] == 20
        assert first["sources"]["csv"]["failed"] == 1
        assert rows(url, "SELECT count(*) FROM processed_users WHERE source = 'csv'")[0][0] == 30
        ((reason, data),) = rows(url, "SELECT error_reason, data FROM dlq_users WHERE source = 'csv'")
        assert reason == "csv_malformed" and "b_broken.csv line 2: 6 fields" in data
        assert not [p for p in (u["password"] for u in real[:30]) if p in str(rows(url, "SELECT data FROM raw_users"))]

        # unchanged files are not processed again
        second = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        assert "csv" not in second["sources"] and second["counts"]["inserted"] == 0

        # a changed file is reprocessed: one row changed, one added
        changed = real[:31]
        changed[4] = {**changed[4], "lastName": "Changed"}
        good.write_text(HEADER + csv_rows(changed))
        third = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        assert third["sources"]["csv"] == {
            "inserted": 1,
            "updated": 1,
            "unchanged": 29,
            "restored": 0,
            "invalidated": 0,
            "failed": 0,
        }
        assert rows(url, "SELECT last_name FROM processed_users WHERE id = 5004") == [("Changed",)]


@pytest.mark.usefixtures("prefect_server")
def test_newest_record_wins_between_api_and_csv(settings_env, database_url, tmp_path):
    url = database_url
    drop = tmp_path / "drop"
    drop.mkdir()
    settings_env(database_url=url, users_csv_dir=drop)
    user = load_real_users()[0]
    old_csv = drop / "old.csv"
    old_csv.write_text(HEADER + csv_rows([{**user, "lastName": "FromOldCsv"}], start_id=user["id"]))
    past = time.time() - 3600
    os.utime(old_csv, (past, past))
    with DummyJsonServer([user]) as server:
        asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        # the API (fetched now) is newer than the hour-old file: the API's record stands
        assert rows(url, f"SELECT last_name, source FROM processed_users WHERE id = {user['id']}") == [
            (user["lastName"], "dummyjson")
        ]
        # a drop produced after the API's next fetch (its file time an hour ahead) is the newest observation:
        # it wins, and keeps winning over every fetch made before its time, whatever the API serves
        new_csv = drop / "new.csv"
        new_csv.write_text(HEADER + csv_rows([{**user, "lastName": "FromNewCsv"}], start_id=user["id"]))
        future = time.time() + 3600
        os.utime(new_csv, (future, future))
        for _ in range(2):
            asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
            assert rows(url, f"SELECT last_name, source FROM processed_users WHERE id = {user['id']}") == [
                ("FromNewCsv", "csv")
            ]
        server.set_users([{**user, "lastName": "FromApiAgain"}])
        asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert rows(url, f"SELECT last_name, source FROM processed_users WHERE id = {user['id']}") == [
        ("FromNewCsv", "csv")
    ]
    assert pl.DataFrame(rows(url, "SELECT id FROM processed_users"), orient="row").height == 1
