"""What the migration tests share: the alembic command line as `make migrate` runs it, SQL on a database of its
own engine, the database the last release made (from its DDL snapshot), and a database's schema as it describes
itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
ALEMBIC = Path(sys.executable).with_name("alembic")
SNAPSHOT = ROOT / "tests" / "data"  # schema_v0_<dialect>.sql: release fca55db's create_all, as DDL


def alembic(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The alembic command line, as `make migrate` runs it (from the repository, alembic.ini there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")} | (env or {})
    url_arg = [] if "DATABASE_URL" in env else ["-x", f"url={url}"]
    return subprocess.run(
        [str(ALEMBIC), *url_arg, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def run(sql: str, url: str, **params) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def made_by_the_last_release(url: str) -> None:
    """The database as release fca55db's create_all left it: its tables, no version table."""
    dialect = sa.make_url(url).get_backend_name()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for chunk in (SNAPSHOT / f"schema_v0_{dialect}.sql").read_text().split(";\n"):
                statement = "\n".join(line for line in chunk.splitlines() if not line.startswith("--")).strip()
                if statement:
                    conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def schema(url: str) -> dict:
    """What a database says of its tables (the version table aside), constraint names included."""
    engine = sa.create_engine(url)
    try:
        inspector, out = sa.inspect(engine), {}
        for table in sorted(set(inspector.get_table_names()) - {"sluice_alembic_version"}):
            out[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c["default"]) for c in inspector.get_columns(table)
                ],
                "pk": inspector.get_pk_constraint(table),
                "unique": sorted((u["name"], u["column_names"]) for u in inspector.get_unique_constraints(table)),
                "indexes": sorted((i["name"], i["column_names"], i["unique"]) for i in inspector.get_indexes(table)),
            }
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                out["sqlite_master"] = conn.exec_driver_sql(
                    "SELECT type, name, sql FROM sqlite_master WHERE tbl_name != 'sluice_alembic_version' ORDER BY name"
                ).all()
        return out
    finally:
        engine.dispose()
