"""Prefect flows: one module per flow; they coordinate, the work lives in `tasks/`. Importing a flow changes
nothing in the process: the process tuning (flows/process.py) is applied by the entry points."""
