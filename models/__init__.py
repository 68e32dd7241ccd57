"""SQLModel tables, API variants, settings and the frame validation schema (imports nothing above it).

Importing the package also tunes the process's two allocators and Polars' thread pool: Polars' allocator and
pool, which it reads once, when it loads (every module of the product that imports Polars lives under `models`
or `tasks`, and `tasks` imports this package first), and the C library's allocator, which Python's large
objects come from."""

import ctypes
import os
import platform

# The stages already work side by side, each in a thread of its own; Polars' pool and its allocator's
# arenas are sized for that: half the cores (1 on 2).
HALF_THE_CORES = max(1, (os.cpu_count() or 2) // 2)

# Polars allocates through its own jemalloc and configures it to hand freed pages back in two steps: after
# 0.5 s as "lazily freed" (MADV_FREE: the kernel takes them only under memory pressure, so they still
# count in the process's RSS), after another 1 s for good. A streaming run frees a batch's frames every
# few hundred ms, so that extra second kept several batches' worth resident. With no lazy step the
# pages go back once the 0.5 s have passed: 10-20 MB less at 100k and about 20 MB less at 1M users in
# `make bench`, no slower.
# jemalloc also gives each thread one of 4 arenas per core, each keeping its own freed pages for those
# 0.5 s, so a page one stage freed could not serve the next stage's piece. With arenas as many as half the
# cores (one on 2) the flow process peaked 5-10 MB lower at 100k, 300k and 1M users, on SQLite and
# PostgreSQL, with the same CPU (docs/benchmarks.md).
# Polars appends this to its own settings (the last one wins); a value already in the environment is left
# as it is.
POLARS_ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
POLARS_ALLOCATOR_CONF = f"muzzy_decay_ms:0,narenas:{HALF_THE_CORES}"
os.environ.setdefault(POLARS_ALLOCATOR_ENV, POLARS_ALLOCATOR_CONF)

# Polars runs its work on a pool of threads as wide as the machine. The stages already work side by side,
# each in a thread of its own, so on 2 cores that pool only added threads contending for the same cores,
# each with its own allocator caches. With a pool half as wide (1 thread there) the flow process peaked
# 11-16 MB lower at 100k and 300k users (8-15 MB in `make bench`), at about the same speed.
# Polars reads it when it loads; a value already in the environment is left as it is.
POLARS_THREADS_ENV = "POLARS_MAX_THREADS"
os.environ.setdefault(POLARS_THREADS_ENV, str(HALF_THE_CORES))

# glibc hands blocks above its mmap threshold (128 KB at start) their own mapping, returned to the system
# when freed, and puts smaller ones on its heap, where freed space stays resident until it can be reused.
# But the threshold moves: once a mapped block is freed, glibc raises it to that block's size (up to
# 32 MB). The stages read their files in pieces of 2-4 MB, so after the first piece every piece and every
# large string came from the heap, whose free space, resident and fragmented, reached 17-27 MB in
# `make bench` runs. Fixed at 128 KB, large blocks are mapped and unmapped each time: 4-6 MB free on the
# heap, peak RSS 12-15 MB lower at 100k and 1M users, no slower. An operator's own MALLOC_MMAP_THRESHOLD_
# (read by glibc at start) is left as it is.
GLIBC_MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
GLIBC_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def _fix_glibc_mmap_threshold() -> None:
    if GLIBC_MMAP_THRESHOLD_ENV in os.environ or platform.libc_ver()[0] != "glibc":
        return
    ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD)


_fix_glibc_mmap_threshold()

# constraint names for the tables every model module defines (migrations refer to them)
import models.naming  # noqa: E402, F401
