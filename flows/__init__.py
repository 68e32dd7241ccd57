"""Prefect flows: one module per flow; they coordinate, the work lives in `tasks/`."""
