"""Sluice's REST API: the processed users, the DLQ, the runs, and the pipeline's health (FastAPI).

Layering: api/ imports models/ only; runs are started through Prefect's API by deployment name."""
