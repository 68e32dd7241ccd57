"""Sources: one module per source; each exposes its Prefect tasks and keeps helpers private."""
