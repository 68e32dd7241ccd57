"""The pipeline's work: pure functions underneath, Prefect tasks on top (retries only where I/O happens)."""

import models  # noqa: F401  (tunes Polars' allocator before any task module loads Polars)
