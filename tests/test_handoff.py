"""Stage hand-off manifests: a follower sees each batch as it is posted, every batch posted before an upstream
failure, and stops when a stage it feeds has failed."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from tasks.staging import handoff


def test_follower_gets_batches_while_they_are_posted(tmp_path):
    manifest = handoff.open_manifest(tmp_path / "extracted.jsonl")
    seen: list[tuple[int, float]] = []

    def follow():
        for entry in handoff.follow(manifest):
            seen.append((entry["n"], time.monotonic()))

    follower = threading.Thread(target=follow)
    follower.start()
    posted = []
    for n in range(3):
        handoff.post(manifest, {"n": n})
        posted.append(time.monotonic())
        time.sleep(0.2)
    handoff.close(manifest, records=3)
    follower.join(timeout=10)
    assert [n for n, _ in seen] == [0, 1, 2]
    # batch 0 was handled before batch 2 was even posted: the stages overlap
    assert seen[0][1] < posted[2]


def test_upstream_failure_comes_after_every_batch_it_posted(tmp_path):
    manifest = handoff.open_manifest(tmp_path / "extracted.jsonl")
    handoff.post(manifest, {"n": 0})
    handoff.post(manifest, {"n": 1})
    handoff.close(manifest, error="SourceError: GET /users answered HTTP 404")
    got = []
    with pytest.raises(handoff.UpstreamFailedError, match="HTTP 404"):
        for entry in handoff.follow(manifest):
            got.append(entry["n"])
    assert got == [0, 1]


def test_a_failed_stage_stops_the_stages_feeding_it_not_those_it_feeds(tmp_path):
    handoff.cancel(tmp_path, "persist")
    for upstream in ("extract", "transform"):
        with pytest.raises(handoff.RunCancelledError, match="persist failed"):
            handoff.check_cancelled(tmp_path, upstream)
    handoff.check_cancelled(tmp_path, "persist")  # its own flag does not stop it


def test_a_follower_of_a_feeding_stage_stops_when_its_own_consumer_fails(tmp_path):
    manifest = handoff.open_manifest(tmp_path / "stages" / "extracted.jsonl")
    handoff.cancel(tmp_path, "persist")
    with pytest.raises(handoff.RunCancelledError):
        next(handoff.follow(manifest, stage="transform", run_dir=tmp_path))


def test_a_complete_manifest_replays_alone(tmp_path):
    manifest = handoff.open_manifest(tmp_path / "transformed.jsonl")
    for n in range(2):
        handoff.post(manifest, {"n": n})
    handoff.close(manifest)
    assert [e["n"] for e in handoff.read_all(manifest)] == [0, 1]
    unfinished = handoff.open_manifest(tmp_path / "unfinished.jsonl")
    handoff.post(unfinished, {"n": 0})
    with pytest.raises(handoff.UpstreamFailedError, match="no end line"):
        handoff.read_all(unfinished)


def test_an_api_batch_is_one_transform_batch_and_a_big_input_is_cut_without_slivers(tmp_path):
    """Task runs grow with batches: a posted batch of `batch_records` is one transform (and persist) task
    run, never a big one plus a sliver of a few lines; a larger input is cut in about equal batches."""
    import orjson

    from tasks.staging.batches import Span, StagedInput
    from tasks.users.stages import source_spans
    from tests.servers.dummyjson import load_real_users

    users = load_real_users()
    lines = [orjson.dumps({**u, "id": i}) + b"\n" for i, u in enumerate(users * 10)]  # 2,080 records, ~2.8 MB
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(lines))
    size = raw.stat().st_size
    whole = StagedInput(source="dummyjson", as_of="", raw_path=str(raw), span=Span(0, size), records=len(lines))
    assert source_spans(whole, batch_records=len(lines)) == [(0, size)]
    spans = source_spans(whole, batch_records=1000)
    counts = [raw.read_bytes()[o : o + n].count(b"\n") for o, n in spans]
    assert len(spans) == 3 and sum(counts) == len(lines) and min(counts) > 50


def test_a_stage_starts_once_the_one_before_it_runs_not_once_it_first_posts(tmp_path):
    """StageRunner's `after`: the next child flow run is created while the stage before it works on its first
    batch, so it is ready when that batch is posted; a new manifest drops the old run's mark."""
    from tasks.staging.runner import StageRunner

    first, second = (handoff.open_manifest(tmp_path / name) for name in ("extracted.jsonl", "transformed.jsonl"))
    working, seen = threading.Event(), {}

    def upstream(manifest):
        handoff.mark_started(manifest)
        working.wait(timeout=10)  # still on its first batch until the next stage has started
        handoff.post(manifest, {"n": 0})
        handoff.close(manifest)
        return {}

    def downstream(manifest):
        seen["posted_before_start"] = (tmp_path / "extracted.jsonl").stat().st_size
        working.set()
        handoff.close(manifest)
        return {}

    stages = StageRunner(str(tmp_path))
    try:
        stages.start("extract", upstream, manifest=first)
        stages.start("transform", downstream, manifest=second, after=("extract", first))
        stages.result("extract"), stages.result("transform")
    finally:
        stages.close()
    assert seen["posted_before_start"] == 0
    assert handoff.has_started(first) and not handoff.has_started(handoff.open_manifest(first))


def test_a_failure_whose_end_line_cannot_be_written_still_stops_its_followers(tmp_path):
    """The failing stage's disk takes no more (here its folder is gone): its followers, in this process, still
    get every batch posted before and then the failure, within a poll; a cancel with no flag file still
    stops the stages feeding the failed one."""
    stages = tmp_path / "stages"
    manifest = handoff.open_manifest(stages / "extracted.jsonl")
    handoff.post(manifest, {"n": 0})
    got, outcome = [], {}

    def follow():
        try:
            for entry in handoff.follow(manifest, stage="transform", run_dir=tmp_path):
                got.append(entry["n"])
        except handoff.UpstreamFailedError as exc:
            outcome["error"], outcome["at"] = str(exc), time.monotonic()

    with open(manifest, "rb"):  # the follower's file stays readable once its folder is removed
        follower = threading.Thread(target=follow)
        follower.start()
        time.sleep(0.2)
        shutil.rmtree(stages)
        failed_at = time.monotonic()
        handoff.close(manifest, error="OSError: [Errno 28] No space left on device")
        follower.join(timeout=10)
    assert got == [0] and "No space left on device" in outcome["error"]
    assert outcome["at"] - failed_at < 0.5

    nowhere = tmp_path / "a-file"
    nowhere.write_text("")  # a run dir inside a file: no flag can be written there
    handoff.cancel(nowhere, handoff.RUN)
    with pytest.raises(handoff.RunCancelledError, match="run failed"):
        handoff.check_cancelled(nowhere, "extract")
    handoff.forget(nowhere)
    handoff.check_cancelled(nowhere, "extract")  # the run is over: nothing of it is kept


def test_a_follower_waits_for_a_running_writer_however_long_and_gives_up_on_a_gone_one(tmp_path):
    manifest = handoff.open_manifest(tmp_path / "extracted.jsonl")

    def slow_stage():
        handoff.post(manifest, {"n": 0})
        time.sleep(0.5)  # its next batch takes longer than the idle timeout
        handoff.close(manifest)

    with handoff.writing(manifest):  # a stage of this process is writing it
        quiet = threading.Thread(target=slow_stage)
        quiet.start()
        assert [e["n"] for e in handoff.follow(manifest, idle_timeout=0.1)] == [0]
        quiet.join()
    abandoned = handoff.open_manifest(tmp_path / "abandoned.jsonl")
    handoff.post(abandoned, {"n": 0})
    started = time.monotonic()
    with pytest.raises(handoff.UpstreamFailedError, match="no end line"):
        list(handoff.follow(abandoned, idle_timeout=0.3))
    assert 0.3 < time.monotonic() - started < 2
