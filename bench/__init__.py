"""Benchmarks: scripts that print a table and compare against the baseline in the same run (README, bench/RESULTS.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slm_flywheel.config import Settings


def quiet_settings() -> Settings:
    """The settings (flywheel.yaml and environment), with the datasets / transformers progress bars
    and warnings off and torch on the configured thread count: what a benchmark's table needs."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    from slm_flywheel.config import load_settings

    disable_progress_bar()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    settings = load_settings()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return settings
