"""Benchmarks (`make bench`, `make bench-api`): never part of `make test`."""
