"""Noise levels of a scheduler's steps, so that a negative can be timed by sigma or timestep percent.

``schedule.py`` defines the units (:class:`~negschedule.schedule.Sigma`,
:class:`~negschedule.schedule.TimestepPercent`) and how a bound falls on a step given the steps'
sigmas; this module reads those sigmas off a diffusers scheduler, and turns the bounds of a call
into steps before anything else sees them. Sigma is k-diffusion's (and ComfyUI's, A1111's)
``sqrt((1 - alpha_bar) / alpha_bar)`` of a variance-preserving model.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

from .errors import InputError
from .schedule import NegativeWindow, NoiseLevel, noise_level_step

# ComfyUI's alpha_bar for the last timestep of a zero-terminal-SNR schedule, whose true sigma is infinite.
ZERO_SNR_ALPHA_BAR = 4.8973451890853435e-08


def training_sigmas(scheduler) -> list[float]:
    """Sigma of every training timestep ``0..T-1``, from the scheduler's ``alphas_cumprod``."""
    return [math.sqrt((1.0 - a) / a) for a in (max(float(a), ZERO_SNR_ALPHA_BAR) for a in scheduler.alphas_cumprod)]


def step_sigmas(scheduler) -> list[float]:
    """The sigma of each step's first model evaluation, for a scheduler whose ``set_timesteps`` has run.

    Karras-style schedulers (Euler, Heun, DPM++, LMS) keep the sigma of every pass in ``sigmas``;
    the others (DDIM, DDPM, PNDM) step on integer training timesteps, whose sigma is the training one.
    """
    from .passes import step_of_passes

    mapping = step_of_passes(scheduler)
    first_pass = [mapping.index(step) for step in range(mapping[-1] + 1)]
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) >= len(scheduler.timesteps):
        return [float(sigmas[p]) for p in first_pass]
    table = training_sigmas(scheduler)
    return [table[int(round(float(scheduler.timesteps[p])))] for p in first_pass]


def _bounds(negative_start, negative_end, negative_windows) -> list[tuple[str, Any]]:
    """Every bound of a call, with the argument that names it in an error."""
    bounds = [("negative_start", negative_start), ("negative_end", negative_end)]
    for window in negative_windows:
        if isinstance(window, NegativeWindow):
            bounds += [("negative_start", window.start), ("negative_end", window.end)]
        elif isinstance(window, tuple):
            bounds += list(zip(("negative_start", "negative_end"), window[1:]))
    return bounds


def _has_noise_level(negative_start, negative_end, negative_windows) -> bool:
    return any(isinstance(b, NoiseLevel) for _, b in _bounds(negative_start, negative_end, negative_windows))


def _pipeline_sigmas(pipe, num_inference_steps: int, kwargs: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Step and training sigmas of the call ``pipe(**kwargs)``, asked of a copy of its scheduler set as the pipeline sets it."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    scheduler = copy.deepcopy(pipe.scheduler)
    timesteps, sigmas = kwargs.get("timesteps"), kwargs.get("sigmas")
    n = None if timesteps is not None or sigmas is not None else num_inference_steps
    retrieve_timesteps(scheduler, n, "cpu", timesteps=timesteps, sigmas=sigmas)
    return step_sigmas(scheduler), training_sigmas(scheduler)


def refuse_on_image_to_image(negative_start: Any, negative_end: Any, negative_windows: Sequence[Any] = ()) -> None:
    """img2img and inpainting count the steps they run from 0 (A1111's way): a noise level has no step there."""
    for name, value in _bounds(negative_start, negative_end, negative_windows):
        if isinstance(value, NoiseLevel):
            raise InputError(name, str(value), "noise-level bounds time text-to-image pipelines only (img2img counts its own steps)")


def resolve_noise_levels(
    pipe,
    kwargs: dict[str, Any],
    negative_start: Any,
    negative_end: Any,
    negative_windows: Sequence[Any],
    num_inference_steps: int | None = None,
) -> tuple[Any, Any, list[Any]]:
    """``negative_start`` / ``negative_end`` / windows with every noise-level bound turned into its step.

    Bounds in steps or fractions come back as they are; without a noise-level bound nothing is
    computed. ``num_inference_steps`` None: the call's own (``kwargs``, else the pipeline's default).
    """
    if not _has_noise_level(negative_start, negative_end, negative_windows):
        return negative_start, negative_end, list(negative_windows)
    from .generate import call_defaults

    defaults = call_defaults(pipe)
    if "strength" in defaults:  # img2img / inpainting
        refuse_on_image_to_image(negative_start, negative_end, negative_windows)
    if num_inference_steps is None:
        num_inference_steps = kwargs.get("num_inference_steps", defaults.get("num_inference_steps", 50))
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
        raise InputError("num_inference_steps", num_inference_steps, "must be a positive integer")
    step, train = _pipeline_sigmas(pipe, num_inference_steps, kwargs)

    def resolve(bound, argument: str, is_end: bool):
        if not isinstance(bound, NoiseLevel):
            return bound
        bound.check(argument)
        return noise_level_step(bound, step, train, is_end)

    def pair(start, end):
        k, e = resolve(start, "negative_start", False), resolve(end, "negative_end", True)
        if isinstance(end, NoiseLevel) and isinstance(k, int) and e <= k:
            raise InputError("negative_end", str(end), f"falls on step {e}, not after negative_start (step {k})")
        return k, e

    start, end = pair(negative_start, negative_end)
    windows = []
    for window in negative_windows:
        if isinstance(window, tuple) and 1 <= len(window) <= 3:
            window = NegativeWindow(*window)
        if isinstance(window, NegativeWindow):
            window = NegativeWindow(window.prompt, *pair(window.start, window.end))
        windows.append(window)
    return start, end, windows


__all__ = ["refuse_on_image_to_image", "resolve_noise_levels", "step_sigmas", "training_sigmas"]
