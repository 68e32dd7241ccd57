"""What a sharded run's parent and its shards hand each other through the staging store (STAGING_URL): the
shard's orders (flow parameters), its result (a JSON object beside its files), and its pulse (a small object
rewritten while it runs, so the parent notices a shard whose worker died)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import msgspec
import orjson

from tasks.staging.batches import StagedInput
from tasks.staging.store import StagingStore

PULSE_SECONDS = 5.0  # a running shard rewrites its pulse this often
RESULT, PULSE, SEEN_IDS = "result.json", "pulse.json", "seen_ids.arrows"


def shard_prefix(run_id: str, index: int) -> str:
    """Where shard `index` (0-based) of run `run_id` leaves its files in the staging store."""
    return f"runs/{run_id}/shard-{index + 1}"


@dataclass(frozen=True)
class ShardResult:
    """A finished shard: its range, what each stage counted, the files it left (kind -> store key, in the order
    the parent concatenates them), and its seconds."""

    index: int
    count: int
    start: int
    stop: int | None
    flow_run_id: str
    records: int
    valid: int
    invalid: int
    reasons: dict[str, int]
    persisted: dict[str, int]
    sources: dict[str, dict[str, int]]
    observed_schema: dict[str, dict[str, str]]
    findings: list[str]
    totals: list[int]
    files: dict[str, str]
    seen_ids: str | None  # store key of the API's ids the shard's range held (Arrow IPC), for the deletion check
    stage_seconds: dict[str, float]
    seconds: float
    attempts: int = 1
    raw_bytes: int = 0  # the bytes of the API's raw lines the shard staged (the parent checks its join)
    as_of: str = ""
    others: list[StagedInput] = field(default_factory=list)  # the plug-ins' inputs the shard staged

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes) -> ShardResult:
        return msgspec.json.decode(data, type=cls)

    def summary(self) -> dict:
        """What the run's record keeps of the shard."""
        return {
            "shard": self.index + 1,
            "start": self.start,
            "stop": self.stop,
            "flow_run_id": self.flow_run_id,
            "attempts": self.attempts,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.invalid,
            "persisted": self.persisted,
            "stage_seconds": self.stage_seconds,
            "seconds": self.seconds,
        }


class Pulse:
    """While a shard runs, a thread rewrites its pulse object every PULSE_SECONDS; a write that fails is tried
    again at the next."""

    def __init__(self, store: StagingStore, prefix: str, flow_run_id: str) -> None:
        self.store, self.key, self.flow_run_id = store, f"{prefix}/{PULSE}", flow_run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="shard-pulse", daemon=True)

    def __enter__(self) -> Pulse:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=PULSE_SECONDS)

    def _write(self) -> None:
        try:
            self.store.write_bytes(self.key, orjson.dumps({"at": time.time(), "flow_run_id": self.flow_run_id}))
        except Exception:  # noqa: BLE001,S110 (a missed pulse is tried again; the parent waits LOST_SECONDS)
            pass

    def _beat(self) -> None:
        while not self._stop.wait(PULSE_SECONDS):
            self._write()


def pulse_age(store: StagingStore, prefix: str, flow_run_id: str) -> float | None:
    """Seconds since the shard's flow run `flow_run_id` last pulsed; None when it has not yet (or another
    attempt's pulse is there)."""
    key = f"{prefix}/{PULSE}"
    try:
        pulse = orjson.loads(store.read_bytes(key)) if store.exists(key) else None
    except Exception:  # noqa: BLE001 (being rewritten, or the store away for a moment: no verdict)
        return None
    if not pulse or pulse.get("flow_run_id") != flow_run_id:
        return None
    return time.time() - float(pulse["at"])
