"""The users API source, DummyJSON's contract (`GET base?limit=L&skip=S` -> {users, total, skip, limit}).

constants.py: the contract's names and limits; client.py: HTTP (one page, retried alone); checkpoint.py: where
an interrupted walk resumes; lines.py: the staged lines; pages.py: the Prefect task fetching a run of pages;
walk.py: a run's whole extraction (the entry point)."""

from tasks.extract.dummyjson.walk import ApiSource, extract_api

__all__ = ["ApiSource", "extract_api"]
