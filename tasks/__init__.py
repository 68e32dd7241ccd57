"""The pipeline's work: pure functions underneath, Prefect tasks on top (retries only where I/O happens)."""
