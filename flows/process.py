"""Process tuning for a flow process (the stages, Polars and glibc's allocator), applied by the process's entry
point before Polars loads: `tune()` in `make run` (dev/run.py) and the bench; a worker's flow process gets the
same values as environment variables from prefect.yaml's job variables. Importing anything changes nothing.
Each value an operator already set in the environment is kept. Why each (docs/benchmarks.md):
- the stages already work side by side, each in a thread of its own: Polars' pool takes half the cores;
- Polars' jemalloc returns freed pages without the lazy step and has as many arenas as that pool, so a page
  one stage freed can serve the next stage's piece;
- glibc's mmap threshold stays at 128 KB, so the stages' pieces are mapped and unmapped each time instead of
  fragmenting the heap."""

from __future__ import annotations

import ctypes
import os
import platform

HALF_THE_CORES = max(1, (os.cpu_count() or 2) // 2)
POLARS_ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"  # Polars appends it to its own settings (the last one wins)


def allocator_conf(arenas: int) -> str:
    return f"muzzy_decay_ms:0,narenas:{arenas}"


POLARS_ALLOCATOR_CONF = allocator_conf(HALF_THE_CORES)
POLARS_THREADS_ENV = "POLARS_MAX_THREADS"
GLIBC_MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc reads an operator's own at start
GLIBC_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def tune() -> None:
    """Polars' pool and allocator (read once, when Polars loads) and glibc's mmap threshold."""
    os.environ.setdefault(POLARS_ALLOCATOR_ENV, POLARS_ALLOCATOR_CONF)
    os.environ.setdefault(POLARS_THREADS_ENV, str(HALF_THE_CORES))
    if GLIBC_MMAP_THRESHOLD_ENV not in os.environ and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD)
