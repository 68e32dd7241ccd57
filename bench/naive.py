"""The hand-rolled way, for comparison: the same job as users-etl, one record at a time.

Per record: drop the password, hash the record, a pydantic model validates it (every rule, every failure
kept), Python masks the sensitive fields, the ORM looks the row up and inserts or updates it (raw, DLQ and
processed keyed as users-etl keys them, so a re-run adds nothing), and a line goes to each JSONL file; at
the end the three files go to the SFTP server with paramiko's plain `put`. Prints its seconds as JSON.

With --inserts-only, the lighter path this benchmark first compared against: the same validation and
inserts, but no lookups (so not re-runnable), no files and no delivery.

Usage: python -m bench.naive API_URL DATABASE_URL LIMIT OUT_DIR [--inserts-only] (SFTP_* settings as the flow's).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paramiko
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlmodel import Session, select

from models.db import engine_for
from models.migrate import upgrade
from models.rules import MAX_AGE, MIN_AGE
from models.schema import EMAIL_PATTERN
from models.settings import get_settings
from models.users import DlqUser, ProcessedUser, RawUser
from tasks.deliver import SftpTarget
from tasks.redact import SENSITIVE_FIELDS
from tasks.users.transform import read_departments

DEPARTMENTS: dict[str, str] = {}


class Coordinates(BaseModel):
    lat: float | None = None
    lng: float | None = None


class Address(BaseModel):
    city: str | None = None
    state: str | None = None
    country: str | None = None
    postalCode: str | None = None  # noqa: N815
    coordinates: Coordinates | None = None


class Bank(BaseModel):
    cardNumber: str | None = None  # noqa: N815
    cardType: str | None = None  # noqa: N815
    iban: str | None = None


class Company(BaseModel):
    department: str = Field(min_length=1)
    name: str | None = None
    title: str | None = None

    @field_validator("department")
    @classmethod
    def known(cls, v: str) -> str:
        if v.strip() not in DEPARTMENTS:
            raise ValueError("department_unknown")
        return v.strip()


class User(BaseModel):
    id: int
    firstName: str = Field(min_length=1)  # noqa: N815
    lastName: str | None = None  # noqa: N815
    maidenName: str | None = None  # noqa: N815
    username: str | None = None
    email: str = Field(pattern=EMAIL_PATTERN)
    phone: str | None = None
    age: int = Field(ge=MIN_AGE, le=MAX_AGE)
    gender: str | None = None
    birthDate: str | None = None  # noqa: N815
    bloodGroup: str | None = None  # noqa: N815
    height: float | None = None
    weight: float | None = None
    eyeColor: str | None = None  # noqa: N815
    university: str | None = None
    role: str | None = None
    address: Address | None = None
    company: Company
    bank: Bank | None = None
    ssn: str | None = None


def mask(value: str | None) -> str | None:
    return None if value is None else "****" + value[-4:] if len(value) >= 4 else "****"


def masked_copy(rec: object) -> object:
    if isinstance(rec, dict):
        return {k: mask(str(v)) if k in SENSITIVE_FIELDS and v is not None else masked_copy(v) for k, v in rec.items()}
    if isinstance(rec, list):
        return [masked_copy(v) for v in rec]
    return rec


def processed_row(u: User, record_hash: str, now: datetime) -> dict:
    a, b = u.address or Address(), u.bank or Bank()
    c = a.coordinates or Coordinates()
    return dict(
        id=u.id,
        first_name=u.firstName,
        last_name=u.lastName,
        maiden_name=u.maidenName,
        username=u.username,
        email=u.email,
        phone=u.phone,
        age=u.age,
        gender=u.gender,
        birth_date=u.birthDate,
        blood_group=u.bloodGroup,
        height=u.height,
        weight=u.weight,
        eye_color=u.eyeColor,
        university=u.university,
        role=u.role,
        city=a.city,
        state=a.state,
        country=a.country,
        postal_code=a.postalCode,
        latitude=c.lat,
        longitude=c.lng,
        department=u.company.department,
        department_code=DEPARTMENTS[u.company.department],
        company_name=u.company.name,
        company_title=u.company.title,
        ssn_masked=mask(u.ssn),
        card_number_masked=mask(b.cardNumber),
        card_type=b.cardType,
        iban_masked=mask(b.iban),
        record_hash=record_hash,
        first_seen_at=now,
        updated_at=now,
        run_id="naive",
    )


def deliver(files: list[Path]) -> None:
    """Each file put with paramiko's defaults (the settings and host-key check as users-etl's)."""
    target = SftpTarget.from_settings(get_settings())
    client = paramiko.SSHClient()
    client.load_host_keys(str(target.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.username,
            key_filename=str(target.key_path),
            passphrase=target.passphrase.get_secret_value() if target.passphrase else None,
            allow_agent=False,
            look_for_keys=False,
        )
        sftp = client.open_sftp()
        for f in files:
            sftp.put(str(f), f"{target.remote_base}/naive-{f.name}")
    finally:
        client.close()


def main() -> None:
    api, db_url, limit, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    full = "--inserts-only" not in sys.argv[5:]
    DEPARTMENTS.update(dict(read_departments("data/departments.csv").iter_rows()))
    upgrade(db_url)
    engine = engine_for(db_url)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "raw.jsonl", out / "processed.jsonl", out / "dlq.jsonl"]
    started = time.perf_counter()
    skip, seen = 0, 0
    with (
        httpx.Client(timeout=60) as client,
        Session(engine) as session,
        open(files[0], "w") as raw_out,
        open(files[1], "w") as processed_out,
        open(files[2], "w") as dlq_out,
    ):
        while seen < limit:
            page = client.get(api, params={"limit": 1000, "skip": skip}).json()
            if not page["users"]:
                break
            for rec in page["users"]:
                rec.pop("password", None)
                now = datetime.now(UTC)
                text = json.dumps(rec, sort_keys=True)
                record_hash = hashlib.sha256(text.encode()).hexdigest()
                if full:
                    raw_out.write(text + "\n")
                if not full or session.exec(select(RawUser).where(RawUser.record_hash == record_hash)).first() is None:
                    session.add(
                        RawUser(
                            run_id="naive",
                            source_id=str(rec.get("id")),
                            record_hash=record_hash,
                            inserted_at=now,
                            data=text,
                        )
                    )
                try:
                    u = User.model_validate(rec)
                except ValidationError as exc:
                    reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                    masked = json.dumps(masked_copy(rec))
                    if full:
                        dlq_out.write(json.dumps({"error_reason": reasons, "data": masked}) + "\n")
                    dlq = (
                        session.exec(select(DlqUser).where(DlqUser.record_hash == record_hash)).first()
                        if full
                        else None
                    )
                    if dlq is None:
                        session.add(
                            DlqUser(
                                run_id="naive",
                                error_reason=reasons,
                                data=masked,
                                record_hash=record_hash,
                                inserted_at=now,
                                last_seen_at=now,
                            )
                        )
                    else:
                        dlq.last_seen_at = now
                else:
                    row = processed_row(u, record_hash, now)
                    if full:
                        processed_out.write(json.dumps(row, default=str) + "\n")
                    current = session.get(ProcessedUser, u.id) if full else None
                    if current is None:
                        session.add(ProcessedUser(**row))
                    elif current.record_hash != record_hash:
                        for k, v in row.items():
                            if k != "first_seen_at":
                                setattr(current, k, v)
                session.flush()
                seen += 1
            session.commit()
            skip += len(page["users"])
    if full:
        deliver(files)
    print(json.dumps({"records": seen, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
