"""What a source's failure is, shared by every source: permanent (a 4xx, a broken contract: retrying will not
fix it) or transient (down, slow, overloaded: worth another try), and the predicates retries use."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from tasks.retry import retry_when


class SourceError(RuntimeError):
    """The source answered in a way retrying will not fix (4xx, broken contract)."""


class SourceAuthError(SourceError):
    """The source refused the credentials (401/403): the message names the setting to check, never its value."""


class TransientSourceError(RuntimeError):
    """The source is down, slow or overloaded; worth another try."""


# Prefect retry_condition_fn (the feeds source uses it): a TransientSourceError is worth another try
is_transient = retry_when(lambda exc: isinstance(exc, TransientSourceError))


def source_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run logger inside Prefect, a plain logger when a source's function is called on its own."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("sluice.extract")
