"""The users API source: DummyJSON's contract by default (`GET base?limit=L&skip=S` -> {users, total}), any
users API by configuration (models/sources.py: pagination style, records path, credentials).

constants.py: limits; paging.py: the pagination styles; auth.py: credentials on every request; client.py: HTTP
(one page, retried alone); checkpoint.py: where an interrupted walk resumes; lines.py: the staged lines;
pages.py: the Prefect task fetching a run of pages; walk.py: a source's whole extraction (the entry point)."""

from tasks.extract.users_api.walk import ApiSource, extract_api

__all__ = ["ApiSource", "extract_api"]
