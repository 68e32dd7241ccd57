"""Prefect flows: one module per flow; they coordinate, the work lives in `tasks/`. A flow module is a run's
entry point (the worker's flow process imports it first), so the package tunes the process for the stages
before anything loads Polars (flows/process.py)."""

from flows.process import tune

tune()
