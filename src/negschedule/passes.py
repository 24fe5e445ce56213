"""Map a pipeline's loop passes to denoising steps.

Timing in negschedule is always in steps (``num_inference_steps`` of them, 0-based), never in loop
passes. Most schedulers make one pass per step, but some evaluate the model more than once per step:
Heun and the KDPM2 samplers make a second (corrector) pass for every step but the last, and PNDM
makes four Runge-Kutta passes for each of its first three steps (or, with ``skip_prk_steps``, two
passes for its first step). Each pass belongs to the step it helps complete, so "the first k steps"
really are untouched when a negative starts at step k.
"""

from __future__ import annotations

from .errors import InputError


def step_of_passes(scheduler) -> list[int]:
    """The step index of every loop pass, for a scheduler whose ``set_timesteps`` has run."""
    n_passes = len(scheduler.timesteps)
    n_steps = getattr(scheduler, "num_inference_steps", None)
    if n_steps is None:
        raise InputError("scheduler", type(scheduler).__name__, "set_timesteps has not run; no steps to map")
    name = type(scheduler).__name__

    if name == "PNDMScheduler":
        if scheduler.config.skip_prk_steps:
            # The first step is a predictor pass plus a corrector pass at the next timestep.
            mapping = [0, 0] + list(range(1, n_passes - 1))
        else:
            n_prk = len(scheduler.prk_timesteps)  # four passes per Runge-Kutta step
            mapping = [p // 4 for p in range(n_prk)] + [n_prk // 4 + j for j in range(n_passes - n_prk)]
    elif getattr(scheduler, "order", 1) == 2 and n_passes == 2 * n_steps - 1:
        # Heun / KDPM2: first-order pass then corrector pass per step; the last step has no corrector.
        mapping = [p // 2 for p in range(n_passes)]
    elif n_passes == n_steps:
        mapping = list(range(n_passes))
    else:
        raise InputError(
            "scheduler",
            name,
            f"makes {n_passes} loop passes for {n_steps} steps and negschedule does not know which pass "
            "belongs to which step",
        )
    if mapping[-1] != n_steps - 1 or len(mapping) != n_passes:
        raise InputError("scheduler", name, f"pass-to-step map ends at step {mapping[-1]}, expected {n_steps - 1}")
    return mapping
