"""Retry only what another try can fix: one Prefect `retry_condition_fn` shape for every task with retries."""

from __future__ import annotations

from collections.abc import Callable


def retry_when(is_transient: Callable[[BaseException], bool]) -> Callable:
    """A `retry_condition_fn` that retries when the failed run's exception passes `is_transient`."""

    def condition(_task, _task_run, state) -> bool:
        try:
            state.result()
        except BaseException as exc:  # noqa: BLE001  (the run's own exception, re-raised by the state)
            return is_transient(exc)
        return False

    return condition
