"""Experiments on when a negative prompt should act: sweeps, removal curves, attention maps, reports.

``sweep(pipe, prompt=..., negative_prompt=..., starts=range(T), seeds=[...], num_inference_steps=T)``
samples every start step for every seed through the prefix-sharing engine (``engine.py``);
``removal_curve(...)`` finds, per start step, the fewest steps of negative that remove a concept;
``detectors`` says whether a concept is present (toy world or CLIP), ``metrics`` measures,
``store`` makes long runs resumable, ``report`` writes the grid, tables, plots and ``report.html``;
``commands`` adds the CLI verbs. Attention heatmaps live in ``negschedule.attention``.
"""

from .removal import RemovalConfig, RemovalCurve, removal_curve
from .sweep import SweepConfig, SweepResult, sweep

__all__ = ["RemovalConfig", "RemovalCurve", "SweepConfig", "SweepResult", "removal_curve", "sweep"]
