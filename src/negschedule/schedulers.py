"""Schedulers by the short names A1111 and kohya users know (``euler_a``, ``dpmpp_2m``, ...).

One table maps each name to its diffusers class and the config overrides that make it the sampler
of that name; unknown names are errors, never a silent fallback.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError

# name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}

# Stable Diffusion 1.x/2.x training noise schedule: the base config when no pipeline supplies one.
SD_BASE_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


class UnknownSchedulerError(InputError):
    """Raised for a scheduler name outside :data:`SCHEDULERS`."""


def make_scheduler(name: str, base_config: dict[str, Any] | None = None):
    """Build scheduler ``name`` from ``base_config`` (a pipeline's scheduler config) or SD's defaults."""
    import diffusers

    if name not in SCHEDULERS:
        raise UnknownSchedulerError("scheduler", name, f"unknown name; choose one of {', '.join(SCHEDULERS)}")
    class_name, overrides = SCHEDULERS[name]
    config = dict(SD_BASE_CONFIG if base_config is None else base_config)
    config.update(overrides)
    return getattr(diffusers, class_name).from_config(config)


def set_scheduler(pipe, name: str):
    """Swap ``pipe.scheduler`` for scheduler ``name`` built on the pipeline's own config."""
    pipe.scheduler = make_scheduler(name, dict(pipe.scheduler.config))
    return pipe
