"""Shared fixtures: tiny stock pipelines built offline, and a runner that records per-step latents."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # CPU matmul results must not depend on the thread count between runs

# Where the shared tiny pipelines run. CI has no GPU; on a machine with one, NEGSCHEDULE_TEST_DEVICE=cuda
# (and NEGSCHEDULE_TEST_DTYPE=float16) runs the bit-exact comparisons against the stock pipelines there.
TEST_DEVICE = os.environ.get("NEGSCHEDULE_TEST_DEVICE", "cpu")
TEST_DTYPE = getattr(torch, os.environ.get("NEGSCHEDULE_TEST_DTYPE", "float32"))
if TEST_DEVICE == "cpu":
    # The command line picks a GPU where there is one (--device auto); the tests compare what it writes
    # with pipelines on the CPU, so on a machine with a GPU they hide it, here and in the CLIs they start.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
else:
    # Strict float32 on the GPU (no TF32), so the tolerances written for the CPU's float32 hold.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


_SHARED: list = []  # the session's shared pipelines, each with the scheduler it was built with


@pytest.fixture(scope="session")
def tiny_sd():
    from negschedule.tiny import build_tiny_sd

    pipe = build_tiny_sd(seed=0).to(TEST_DEVICE, TEST_DTYPE)
    _SHARED.append((pipe, pipe.scheduler))
    return pipe


@pytest.fixture(scope="session")
def tiny_sdxl():
    from negschedule.tiny import build_tiny_sdxl

    pipe = build_tiny_sdxl(seed=0).to(TEST_DEVICE, TEST_DTYPE)
    _SHARED.append((pipe, pipe.scheduler))
    return pipe


@pytest.fixture(autouse=True)
def _restore_shared_schedulers():
    """Each test finds the shared pipelines with their own schedulers: one that sets Heun (two passes a
    step) cannot change what the next one counts, in whatever order the tests run."""
    yield
    for pipe, scheduler in _SHARED:
        pipe.scheduler = type(scheduler).from_config(scheduler.config)


class StepRecorder:
    """A user ``callback_on_step_end`` that keeps the latents after the last pass of every step."""

    def __init__(self):
        self._by_step: dict[int, torch.Tensor] = {}
        self.pass_steps = None

    def __call__(self, pipe, i, t, kwargs):
        from negschedule.passes import step_of_passes

        if self.pass_steps is None:
            self.pass_steps = step_of_passes(pipe.scheduler)
        # Each pass overwrites its step's entry, so a step keeps its last pass's latents - also where
        # the loop ends early (img2img runs only the last passes of the schedule).
        self._by_step[self.pass_steps[i]] = kwargs["latents"].clone()
        return {}

    @property
    def latents(self) -> list[torch.Tensor]:
        return [self._by_step[step] for step in sorted(self._by_step)]


def latents_of(fn, pipe, **kwargs):
    """Run ``fn(pipe, ...)`` to latents with a fixed seed; returns (final latents, per-step latents)."""
    recorder = StepRecorder()
    kwargs.setdefault("num_inference_steps", 6)
    kwargs.setdefault("guidance_scale", 7.5)
    out = fn(
        pipe,
        generator=torch.Generator().manual_seed(kwargs.pop("seed", 1234)),
        output_type="latent",
        callback_on_step_end=recorder,
        callback_on_step_end_tensor_inputs=["latents"],
        **kwargs,
    )
    return out.images, recorder.latents


def stock(pipe, **kwargs):
    """The stock pipeline call, unchanged."""
    return pipe(**kwargs)
