"""Thin Prefect tasks around `slm_flywheel.models` (logging, artifacts, transactions, locks)."""
