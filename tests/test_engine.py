"""The engine's branches against independent ``generate()`` calls, bit for bit, on every scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negschedule import generate
from negschedule.engine import Batching, Engine, EngineConfig, Run, sample_runs, start_sweep_runs
from negschedule.errors import InputError
from negschedule.schedulers import SCHEDULERS as SCHEDULER_TABLE
from negschedule.schedulers import set_scheduler

# Every scheduler the core supports, and PNDM both with its Runge-Kutta passes and without.
SCHEDULERS = [(name, {}) for name in SCHEDULER_TABLE] + [("pndm", {"skip_prk_steps": True})]

N = 4
PROMPT = "a red cat"
NEG = "blue hat"


def reference(pipe, run: Run, seed: int, **kwargs):
    kwargs.setdefault("num_inference_steps", N)
    kwargs.setdefault("output_type", "latent")
    out = generate(pipe, prompt=PROMPT, generator=torch.Generator().manual_seed(seed), **run.generate_kwargs(), **kwargs)
    return out.images


RUNS = start_sweep_runs(NEG, range(N), N) + [
    Run(NEG, 1, 3),  # a window: on, then off again
    Run(NEG, 2, cfg_off=True),  # one evaluation per step while off
    Run(f"[:{NEG}:0.5]"),  # A1111 prompt editing
    Run(NEG, 2, negative_windows=(("green", 0, 1),)),
    # Another CFG scale where the negative acts: shares the trunk with Run(NEG, 2) until step 2, then splits.
    Run(NEG, 2, guidance_scale_with_negative=10.0),
    Run(NEG, 1, 3, guidance_scale_with_negative=9.0),
    Run(NEG, 2, cfg_off=True, guidance_scale_with_negative=10.0),
]


@pytest.mark.parametrize("batching", [Batching.PER_BRANCH, Batching.CALIBRATED], ids=lambda b: b.value)
@pytest.mark.parametrize("name, overrides", SCHEDULERS, ids=lambda p: p if isinstance(p, str) else ("skip_prk" if p else ""))
def test_every_run_equals_an_independent_generate_call(tiny_sd, name, overrides, batching):
    set_scheduler(tiny_sd, name, **overrides)
    result = sample_runs(tiny_sd, RUNS, seeds=[7, 8], config=EngineConfig(batching=batching), prompt=PROMPT,
                         num_inference_steps=N, output_type="latent")
    for seed in (7, 8):
        for r, run in enumerate(RUNS):
            assert torch.equal(result.image(seed, r), reference(tiny_sd, run, seed)), f"{name} seed {seed} {run}"
    assert result.model_evaluations < result.independent_evaluations


def test_images_equal_generate_images(tiny_sd):
    set_scheduler(tiny_sd, "euler_a")
    runs = [Run(), Run(NEG, 2)]
    result = sample_runs(tiny_sd, runs, seeds=[3], prompt=PROMPT, num_inference_steps=N, output_type="pil")
    for r, run in enumerate(runs):
        expected = reference(tiny_sd, run, 3, output_type="pil")[0]
        assert np.array_equal(np.asarray(result.image(3, r)[0]), np.asarray(expected))


def test_start_sweep_counts_shared_prefix_evaluations(tiny_sd):
    set_scheduler(tiny_sd, "ddim")
    T = 5
    runs = start_sweep_runs(NEG, range(T), T)
    result = sample_runs(tiny_sd, runs, seeds=[0], prompt=PROMPT, num_inference_steps=T, output_type="latent")
    # T steps of the no-negative trunk, plus T - k steps for the run starting at k; 2 evaluations each (CFG).
    assert result.model_evaluations == 2 * (T + T * (T + 1) // 2)
    assert result.independent_evaluations == 2 * T * (T + 1)
    assert result.unet_calls == T + T * (T + 1) // 2


def test_a_scale_with_negative_shares_the_trunk_until_the_negative_starts(tiny_sd):
    set_scheduler(tiny_sd, "ddim")
    T = 5
    runs = [Run(NEG, 2), Run(NEG, 2, guidance_scale_with_negative=10.0)]
    result = sample_runs(tiny_sd, runs, seeds=[0], prompt=PROMPT, num_inference_steps=T, output_type="latent")
    assert result.model_evaluations == 2 * (2 + 2 * (T - 2))  # one trunk of 2 steps, then a branch each
    assert not torch.equal(result.image(0, 0), result.image(0, 1))


def test_multiple_images_per_prompt_and_prompt_lists(tiny_sd):
    set_scheduler(tiny_sd, "dpmpp_2m")
    prompts = ["a red cat", "a green dog"]
    runs = [Run(), Run(NEG, 1), Run("hat", 3)]
    result = sample_runs(tiny_sd, runs, seeds=[5], prompt=prompts, num_images_per_prompt=2, num_inference_steps=N, output_type="latent")
    for r, run in enumerate(runs):
        expected = generate(tiny_sd, prompt=prompts, num_images_per_prompt=2, num_inference_steps=N, output_type="latent",
                            generator=torch.Generator().manual_seed(5), **run.generate_kwargs()).images
        assert torch.equal(result.image(5, r), expected)
    assert result.model_evaluations == 2 * 4 * (N + (N - 1) + (N - 3))  # CFG x 4 latents per pass


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m", "heun"])
def test_sdxl_runs_equal_generate(tiny_sdxl, scheduler):
    set_scheduler(tiny_sdxl, scheduler)
    runs = [Run(), Run(NEG, 0), Run(NEG, 2), Run(NEG, 1, 3), Run(NEG, 2, cfg_off=True)]
    kw = dict(height=32, width=32, num_inference_steps=N, output_type="latent")
    result = sample_runs(tiny_sdxl, runs, seeds=[1], prompt=PROMPT, **kw)
    for r, run in enumerate(runs):
        expected = generate(tiny_sdxl, prompt=PROMPT, generator=torch.Generator().manual_seed(1), **run.generate_kwargs(), **kw).images
        assert torch.equal(result.image(1, r), expected), run


@pytest.mark.parametrize("images", [1, 2])
def test_sdxl_per_prompt_negatives_off_on_some_rows_from_step_0(tiny_sdxl, images):
    """A row whose negative is off at step 0 gets SDXL's "no negative" (zeros) there too, as at every
    later step and in the engine: not the encoding of "" that the stock call gives negative_prompt=[NEG, ""]."""
    set_scheduler(tiny_sdxl, "euler")
    prompts = [PROMPT, "a green dog"]
    kw = dict(height=32, width=32, num_inference_steps=N, output_type="latent", num_images_per_prompt=images)
    for negatives in ([NEG, "[:green:2]"], [NEG, ""]):
        run = Run(negative_prompt=negatives)
        result = sample_runs(tiny_sdxl, [run], seeds=[1], prompt=prompts, **kw)
        expected = generate(tiny_sdxl, prompt=prompts, generator=torch.Generator().manual_seed(1), **run.generate_kwargs(), **kw).images
        assert torch.equal(result.image(1, 0), expected), negatives


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl"])
def test_a1111_weighted_and_long_negatives_equal_generate(request, fixture):
    pipe = request.getfixturevalue(fixture)
    set_scheduler(pipe, "dpmpp_2m")
    kw = dict(num_inference_steps=N, output_type="latent", num_images_per_prompt=2)
    if fixture == "tiny_sdxl":
        kw.update(height=32, width=32)
    long = ", ".join(["a blue hat"] * 9)  # more than 75 tokens: two chunks
    runs = [Run(), Run("(blue hat:1.4)", 2), Run("(blue hat:1.4)", 0, 3), Run(f"{long} BREAK hat", 1), Run(NEG, 2)]
    result = sample_runs(pipe, runs, seeds=[2], prompt=PROMPT, **kw)
    for r, run in enumerate(runs):
        expected = generate(pipe, prompt=PROMPT, generator=torch.Generator().manual_seed(2), **run.generate_kwargs(), **kw).images
        assert torch.equal(result.image(2, r), expected), run


def test_batched_branches_are_close_and_make_one_call_per_pass(tiny_sd):
    set_scheduler(tiny_sd, "dpmpp_2m")
    runs = start_sweep_runs(NEG, range(N), N)
    exact = sample_runs(tiny_sd, runs, seeds=[0], prompt=PROMPT, num_inference_steps=N, output_type="latent")
    batched = sample_runs(tiny_sd, runs, seeds=[0], config=EngineConfig(batching=Batching.ALL), prompt=PROMPT,
                          num_inference_steps=N, output_type="latent")
    assert batched.unet_calls == N and batched.model_evaluations == exact.model_evaluations
    for r in range(len(runs)):
        torch.testing.assert_close(batched.image(0, r), exact.image(0, r), rtol=1e-4, atol=1e-4)


def _unet_row_by_row(unet, monkeypatch) -> None:
    """Make ``unet`` evaluate a batch one row at a time: batched outputs then equal single ones by
    construction, whatever this CPU's kernels do with a batch size."""
    forward = unet.forward

    def rows(sample, timestep, encoder_hidden_states=None, **kwargs):
        outs = [forward(sample[i : i + 1], timestep, encoder_hidden_states=encoder_hidden_states[i : i + 1], **kwargs)[0]
                for i in range(sample.shape[0])]
        return (torch.cat(outs),)

    monkeypatch.setattr(unet, "forward", rows)


@pytest.mark.parametrize("exact_batches", [False, True])
def test_calibrated_batching_groups_branches_and_counts_its_checks(tiny_sd, monkeypatch, exact_batches):
    set_scheduler(tiny_sd, "dpmpp_2m")
    if exact_batches:
        _unet_row_by_row(tiny_sd.unet, monkeypatch)
    T = 8
    runs = start_sweep_runs(NEG, range(T), T)
    exact = sample_runs(tiny_sd, runs, seeds=[0], prompt=PROMPT, num_inference_steps=T, output_type="latent")
    calibrated = sample_runs(tiny_sd, runs, seeds=[0], config=EngineConfig(batching=Batching.CALIBRATED), prompt=PROMPT,
                             num_inference_steps=T, output_type="latent")
    for r in range(len(runs)):
        assert torch.equal(calibrated.image(0, r), exact.image(0, r))
    assert calibrated.model_evaluations == exact.model_evaluations
    assert calibrated.calibration_evaluations > 0
    if exact_batches or calibrated.unet_calls < exact.unet_calls:
        # Groups checked bit-identical: fewer calls than one per branch and pass, more than one per pass.
        assert T < calibrated.unet_calls < exact.unet_calls
    else:
        # This CPU's batch of two branches differs in the last bits (seen on an AMD EPYC; not on the
        # Intel machines before): the first check refutes it, every branch then runs alone.
        assert calibrated.unet_calls == exact.unet_calls + 1
        assert calibrated.calibration_evaluations == 2 * 2  # one check: two branches of two CFG rows


def test_other_pipelines_are_refused(tiny_sd):
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline(**tiny_sd.components)
    with pytest.raises(InputError) as err:
        Engine(img2img, prompt=PROMPT, num_inference_steps=N)
    assert err.value.argument == "pipe"


def test_unknown_batching_is_refused(tiny_sd):
    with pytest.raises(InputError) as err:
        Engine(tiny_sd, EngineConfig(batching="fast"), prompt=PROMPT, num_inference_steps=N)
    assert err.value.argument == "batching"


def test_prefix_cache_resumes_later_calls(tiny_sd):
    set_scheduler(tiny_sd, "lms")
    engine = Engine(tiny_sd, EngineConfig(cache_prefixes=True), prompt=PROMPT, num_inference_steps=N, output_type="latent")
    first = engine.sample([Run(NEG, 2, 3)], seeds=[4])
    again = engine.sample([Run(NEG, 2, 4), Run(NEG, 3)], seeds=[4])
    # Cached: steps 0..2 of the first new run (it shares them with the first call), 0..1 of the second.
    assert again.model_evaluations == 2 * 1 + 2 * 2
    assert torch.equal(again.image(4, 0), reference(tiny_sd, Run(NEG, 2, 4), 4))
    assert torch.equal(again.image(4, 1), reference(tiny_sd, Run(NEG, 3), 4))
    assert torch.equal(first.image(4, 0), reference(tiny_sd, Run(NEG, 2, 3), 4))


def test_pipeline_scheduler_is_left_alone(tiny_sd):
    set_scheduler(tiny_sd, "dpmpp_2m")
    tiny_sd.scheduler.set_timesteps(9)
    before = tiny_sd.scheduler
    timesteps = before.timesteps.clone()
    sample_runs(tiny_sd, [Run(NEG, 1)], seeds=[0], prompt=PROMPT, num_inference_steps=N, output_type="latent")
    assert tiny_sd.scheduler is before and torch.equal(before.timesteps, timesteps)
    assert before.step_index is None and before.model_outputs == [None] * before.config.solver_order


@pytest.mark.parametrize("name", ["euler", "lms", "heun"])
def test_leading_spacing_noise_scale_does_not_depend_on_the_pipelines_scheduler(tiny_sd, name):
    """With "leading" spacing (SDXL's stock Euler) init_noise_sigma depends on the last set_timesteps:
    the engine scales the first noise by its own scheduler's, as the stock call does, whatever the
    pipeline's scheduler last ran (fresh, or set for another number of steps)."""
    set_scheduler(tiny_sd, name, timestep_spacing="leading")
    expected = reference(tiny_sd, Run(NEG, 2), 7)
    for other in (None, 9):
        set_scheduler(tiny_sd, name, timestep_spacing="leading")
        if other is not None:
            tiny_sd.scheduler.set_timesteps(other)
        result = sample_runs(tiny_sd, [Run(NEG, 2)], seeds=[7], prompt=PROMPT, num_inference_steps=N, output_type="latent")
        assert torch.equal(result.image(7, 0), expected), other


@pytest.mark.parametrize(
    "kwargs, runs, argument",
    [
        (dict(not_supported=1), [Run()], "not_supported"),
        (dict(num_inference_steps=0), [Run()], "num_inference_steps"),
        (dict(), [Run(NEG, N + 1)], "negative_start"),
        (dict(), [Run(None, 1)], "negative_start"),
        (dict(guidance_scale=1.0), [Run(NEG, 1)], "guidance_scale"),
        (dict(), [Run(None, guidance_scale_with_negative=9.0)], "guidance_scale_with_negative"),
        (dict(), [Run(NEG, 1, guidance_scale_with_negative=1.0)], "guidance_scale_with_negative"),
        (dict(prompt="a [red:blue:0.5] cat"), [Run(NEG, 1)], "prompt"),
    ],
)
def test_bad_input_names_the_argument(tiny_sd, kwargs, runs, argument):
    call = dict(prompt=PROMPT, num_inference_steps=N, output_type="latent")
    call.update(kwargs)
    with pytest.raises(InputError) as err:
        sample_runs(tiny_sd, runs, seeds=[0], **call)
    assert err.value.argument == argument


def test_noise_level_bounds_resolve_in_the_engine_as_in_generate(tiny_sd):
    """Sweeps and attention maps take sigma / timestep-percent bounds too, falling on generate()'s steps."""
    from negschedule import Sigma, TimestepPercent

    set_scheduler(tiny_sd, "euler")
    runs = [Run(NEG, TimestepPercent(0.3), Sigma(1.0)), Run(NEG, 1, 3)]
    result = sample_runs(tiny_sd, runs, seeds=[4], prompt=PROMPT, num_inference_steps=N, output_type="latent")
    assert torch.equal(result.image(4, 0), reference(tiny_sd, runs[0], 4))
    assert not torch.equal(result.image(4, 0), reference(tiny_sd, Run(NEG), 4))
