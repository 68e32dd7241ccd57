"""The hand-rolled way, for comparison: per-record pydantic validation and masking, ORM inserts one by one.
Same pages, same rules, same tables; prints its seconds as JSON."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import httpx
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlmodel import Session

from models.db import engine_for
from models.schema import EMAIL_PATTERN
from models.users import DlqUser, ProcessedUser, RawUser
from tasks.transform import read_departments

DEPARTMENTS: dict[str, str] = {}


class Company(BaseModel):
    department: str = Field(min_length=1)
    name: str | None = None
    title: str | None = None

    @field_validator("department")
    @classmethod
    def known(cls, v: str) -> str:
        if v not in DEPARTMENTS:
            raise ValueError("department_unknown")
        return v


class User(BaseModel):
    id: int
    firstName: str = Field(min_length=1)  # noqa: N815
    lastName: str | None = None  # noqa: N815
    email: str = Field(pattern=EMAIL_PATTERN)
    age: int = Field(ge=18, le=65)
    gender: str | None = None
    company: Company
    ssn: str | None = None


def main() -> None:
    api, db_url, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    DEPARTMENTS.update(dict(read_departments("data/departments.csv").iter_rows()))
    engine = engine_for(db_url)
    started = time.perf_counter()
    skip, seen = 0, 0
    with httpx.Client(timeout=60) as client, Session(engine) as session:
        while seen < limit:
            page = client.get(api, params={"limit": 1000, "skip": skip}).json()
            if not page["users"]:
                break
            for rec in page["users"]:
                rec.pop("password", None)
                now = datetime.now(UTC)
                text = json.dumps(rec)
                session.add(RawUser(run_id="naive", source_id=str(rec.get("id")), record_hash=f"{seen}-{skip}", inserted_at=now, data=text))
                try:
                    u = User.model_validate(rec)
                except ValidationError as exc:
                    session.add(DlqUser(run_id="naive", error_reason=str(exc)[:500], data=text, record_hash=f"d{seen}-{skip}",
                                        inserted_at=now, last_seen_at=now))
                else:
                    session.add(ProcessedUser(
                        id=u.id, first_name=u.firstName, last_name=u.lastName, email=u.email, age=u.age, gender=u.gender,
                        department=u.company.department, department_code=DEPARTMENTS[u.company.department],
                        company_name=u.company.name, company_title=u.company.title,
                        ssn_masked=("***-**-" + u.ssn[-4:]) if u.ssn else None,
                        record_hash="naive", first_seen_at=now, updated_at=now, run_id="naive"))
                session.flush()
                seen += 1
            session.commit()
            skip += len(page["users"])
    print(json.dumps({"records": seen, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
