"""Experiments on when a negative prompt should act: sweeps, removal curves, attention maps, reports.

``sweep(pipe, prompt=..., negative_prompt=..., starts=range(T), seeds=[...], num_inference_steps=T)``
samples every start step for every seed through the prefix-sharing engine (``engine.py``);
``metrics`` measures, ``store`` makes long runs resumable, ``report`` writes the grid, tables,
plots and ``report.html``; ``commands`` adds the CLI verbs.
"""

from .sweep import SweepConfig, SweepResult, sweep

__all__ = ["SweepConfig", "SweepResult", "sweep"]
