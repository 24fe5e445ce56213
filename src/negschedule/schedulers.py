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
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    # A1111's "DPM++ 2M Karras" and "LMS Karras": the same solvers on Karras et al.'s sigma spacing.
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": False}),
    "lms_karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "pndm": ("PNDMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
SCHEDULER_NAMES = "|".join(SCHEDULERS)  # for help texts

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


def check_scheduler_name(name: str, argument: str = "scheduler") -> str:
    """``name`` if it is one of :data:`SCHEDULERS`; else the one error, naming ``argument`` (e.g. "--scheduler")."""
    if name not in SCHEDULERS:
        raise UnknownSchedulerError(argument, name, f"unknown name; choose one of {', '.join(SCHEDULERS)}")
    return name


def make_scheduler(name: str, base_config: dict[str, Any] | None = None, **overrides: Any):
    """Build scheduler ``name`` from ``base_config`` (a pipeline's scheduler config) or SD's defaults.

    ``overrides`` are further config values (e.g. ``skip_prk_steps=True`` for PNDM).
    """
    import diffusers

    check_scheduler_name(name)
    class_name, sampler_overrides = SCHEDULERS[name]
    config = dict(SD_BASE_CONFIG if base_config is None else base_config)
    config.update(sampler_overrides)
    config.update(overrides)
    # diffusers resets keys listed in `_use_default_values` to the class default on load, which would
    # silently drop an override of such a key: keep only the keys we did not set.
    forced = set(sampler_overrides) | set(overrides)
    if "_use_default_values" in config:
        config["_use_default_values"] = [k for k in config["_use_default_values"] if k not in forced]
    return getattr(diffusers, class_name).from_config(config)


def set_scheduler(pipe, name: str, **overrides: Any):
    """Swap ``pipe.scheduler`` for scheduler ``name`` built on the pipeline's own config."""
    pipe.scheduler = make_scheduler(name, dict(pipe.scheduler.config), **overrides)
    return pipe


def scheduler_name(scheduler) -> str:
    """The short name of ``scheduler`` if it is one of ours, else its class name."""
    class_name = type(scheduler).__name__
    for name, (cls, overrides) in SCHEDULERS.items():
        if cls == class_name and all(scheduler.config.get(k) == v for k, v in overrides.items()):
            return name
    return class_name
