"""The stage runner: runs a parent flow's stages (child flows), one after another or side by side, and keeps
each one's wall time and the intervals in which its tasks did their own work (`timed_work`)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from tasks.staging import handoff

P = ParamSpec("P")
R = TypeVar("R")

# the running stage's list of [start, end] work intervals (each stage runs in a thread of its own)
_work_spans: contextvars.ContextVar[list[list[float]] | None] = contextvars.ContextVar("work_spans", default=None)


def timed_work(fn: Callable[P, R]) -> Callable[P, R]:
    """A task body whose run counts as the stage's own work (time no task worked on is orchestration)."""

    @functools.wraps(fn)
    def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            spans = _work_spans.get()
            if spans is not None:
                spans.append([started, time.time()])

    return timed


@contextlib.contextmanager
def working(spans: list[list[float]]):
    """Within the block, what `timed_work` bodies do is added to `spans`."""
    token = _work_spans.set(spans)
    try:
        yield
    finally:
        _work_spans.reset(token)


class StageRunner:
    """Runs stages (child flows), keeping each one's wall time, the [start, end] intervals in which its
    tasks did their own work (`timed_work`; time covered by no task's work is orchestration) and their
    total, and which stage is running.

    `run` runs a stage and waits for it; `start` runs it in a thread of its own (the parent's Prefect
    context copied in, so it is still a child flow run) for stages that stream to each other, and `result`
    waits for one. When a streamed stage fails, its manifest is closed as failed and the run's cancel flag
    set, so the stages downstream finish what was posted and stop, and those upstream stop at their next
    batch; `failed_stage` then names the stage whose own error it was.

    Child flows run without heartbeats of their own: they live in the parent's process, whose heartbeat
    already tells the server that process is alive, and each child's heartbeat thread (which sleeps in
    one-second steps) would otherwise hold up the end of every stage by up to a second."""

    def __init__(self, run_dir: str | None = None) -> None:
        self.stage = "start"
        self.run_dir = run_dir
        self.seconds: dict[str, float] = {}
        self.work: dict[str, float] = {}
        self.spans: list[list[float]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._running: list[str] = []

    def run(self, name: str, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run a stage and wait for it."""
        self.stage = name
        return self._timed(name, fn, args, kwargs)

    def running(self) -> list[str]:
        """The stages running now, in the order they started."""
        return list(self._running)

    def _timed(self, name: str, fn: Callable[..., R], args: tuple, kwargs: dict) -> R:
        t0 = time.perf_counter()
        self._running.append(name)
        spans: list[list[float]] = []
        try:
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), working(spans):
                out = fn(*args, **kwargs)
        finally:
            self._running.remove(name)
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        self.work[name] = round(sum(end - start for start, end in spans), 3)
        self.spans += spans
        return out

    def start(
        self, name: str, fn, *args, manifest: str | None = None, after: tuple[str, str] | None = None, **kwargs
    ) -> None:
        """Run a stage alongside the others; `manifest` is the one it posts to (closed as failed if it dies).
        `after` = (stage, its manifest): start once that stage is running (`handoff.mark_started`), has
        posted something or has ended, so the child flow runs are not all created at the same instant (a
        Prefect API on SQLite serialises writes), yet each is ready by the time its first batch is posted."""
        if after is not None:
            upstream, posted = self._futures[after[0]], Path(after[1])
            while not upstream.done() and posted.stat().st_size == 0 and not handoff.has_started(posted):
                time.sleep(handoff.POLL_SECONDS)
        if manifest is not None:
            kwargs["manifest"] = manifest
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="stage")
        self._futures[name] = self._pool.submit(
            contextvars.copy_context().run, self._streamed, name, fn, args, kwargs, manifest
        )

    def _streamed(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, manifest: str | None) -> Any:
        # while it runs, its followers wait for it as long as it takes
        with handoff.writing(manifest) if manifest else contextlib.nullcontext():
            try:
                return self._timed(name, fn, args, kwargs)
            except BaseException as exc:
                if manifest:
                    handoff.close(manifest, error=f"{type(exc).__name__}: {exc}")
                if self.run_dir and not isinstance(exc, (handoff.UpstreamFailedError, handoff.RunCancelledError)):
                    handoff.cancel(self.run_dir, name)
                raise

    def result(self, name: str) -> Any:
        """The stage's summary; if any started stage failed, waits for all and raises the root error."""
        try:
            return self._futures[name].result()
        except BaseException:
            self.stage = name
            self.close()
            for stage, future in self._futures.items():
                exc = future.exception()
                if exc is not None and not isinstance(exc, (handoff.UpstreamFailedError, handoff.RunCancelledError)):
                    self.stage = stage
                    raise exc from None
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
