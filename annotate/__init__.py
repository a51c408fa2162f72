"""Collect and audit human preference judgments: comparison store, pair sampler, labeling UI and audit."""

__version__ = "0.1.0"
