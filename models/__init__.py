"""SQLModel tables, API variants, settings and the frame validation schema (imports nothing above it).

Importing the package also tunes Polars' allocator, which reads its configuration once, when Polars loads:
every module of the product that imports Polars lives under `models` or `tasks`, and `tasks` imports this
package first."""

import os

# Polars allocates through its own jemalloc and configures it to hand freed pages back in two steps: after
# 0.5 s as "lazily freed" (MADV_FREE: the kernel takes them only under memory pressure, so they still
# count in the process's RSS), after another 1 s for good. A streaming run frees a batch's frames every
# few hundred ms, so that extra second kept several batches' worth resident. With no lazy step the
# pages go back once the 0.5 s have passed: 10-20 MB less at 100k and about 20 MB less at 1M users in
# `make bench`, no slower. Polars appends this to its own settings (the last one wins); a value already
# in the environment is left as it is.
POLARS_ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
POLARS_ALLOCATOR_CONF = "muzzy_decay_ms:0"
os.environ.setdefault(POLARS_ALLOCATOR_ENV, POLARS_ALLOCATOR_CONF)
