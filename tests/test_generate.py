"""Bit-exact checks of ``generate()`` against the stock diffusers pipelines, on every scheduler."""

from __future__ import annotations

import inspect

import pytest
import torch

from negschedule import generate
from negschedule.errors import InputError
from negschedule.schedulers import set_scheduler

from .conftest import latents_of, stock

N = 6
PROMPT = "a red cat"
NEG = "blue hat"

SCHEDULERS = [
    ("ddim", {}),
    ("ddpm", {}),
    ("euler", {}),
    ("euler_a", {}),
    ("dpmpp_2m", {}),
    ("lms", {}),
    ("pndm", {}),  # with Runge-Kutta passes: 4 passes for each of the first 3 steps
    ("pndm", {"skip_prk_steps": True}),
    ("heun", {}),  # two passes per step but the last
    ("dpmpp_2m_karras", {}),
    ("lms_karras", {}),
    ("unipc", {}),
]


@pytest.fixture(params=SCHEDULERS, ids=lambda p: p[0] + ("_skip_prk" if p[1] else ""))
def sd(request, tiny_sd):
    name, overrides = request.param
    set_scheduler(tiny_sd, name, **overrides)
    return tiny_sd


def test_start_zero_equals_stock_negative(sd):
    expected, _ = latents_of(stock, sd, prompt=PROMPT, negative_prompt=NEG)
    got, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt=NEG, negative_start=0)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("start", [N, 1.0])
def test_start_at_or_past_last_step_equals_stock_without_negative(sd, start):
    expected, _ = latents_of(stock, sd, prompt=PROMPT)
    got, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt=NEG, negative_start=start)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("k", [1, 3, N - 1])
def test_first_k_steps_untouched_and_step_k_differs(sd, k):
    _, reference = latents_of(stock, sd, prompt=PROMPT)
    _, got = latents_of(generate, sd, prompt=PROMPT, negative_prompt=NEG, negative_start=k)
    assert len(got) == len(reference) == N  # timed in steps, whatever the passes
    for s in range(k):
        assert torch.equal(got[s], reference[s]), f"step {s} changed before the negative started at {k}"
    assert not torch.equal(got[k], reference[k]), f"the negative did nothing at step {k}"


def test_negative_end_stops_it(tiny_sd):
    set_scheduler(tiny_sd, "dpmpp_2m")
    _, with_neg = latents_of(stock, tiny_sd, prompt=PROMPT, negative_prompt=NEG)
    _, got = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=0, negative_end=2)
    assert torch.equal(got[0], with_neg[0]) and torch.equal(got[1], with_neg[1])
    assert not torch.equal(got[2], with_neg[2])


def test_fraction_start_is_int_of_fraction_times_steps(tiny_sd):
    set_scheduler(tiny_sd, "euler")
    by_step, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=3)
    by_fraction, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=0.55)
    assert torch.equal(by_step, by_fraction)  # int(0.55 * 6) == 3


def test_a1111_syntax_switches_after_its_boundary(tiny_sd):
    # [:x:0.5] at 6 steps: "" while step <= int(0.5 * 6) = 3, so x acts from step 4 on.
    set_scheduler(tiny_sd, "ddim")
    a1111, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=f"[:{NEG}:0.5]")
    start4, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=4)
    assert torch.equal(a1111, start4)


def test_each_distinct_text_is_encoded_once(tiny_sd):
    set_scheduler(tiny_sd, "ddim")
    calls = []
    hook = tiny_sd.text_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        # "[a:b:2]" gives a for steps 0..2 then b: two texts, one switch; plus the positive prompt.
        latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt="[cat:dog:2]", num_inference_steps=8)
    finally:
        hook.remove()
    # pipeline: positive + first negative; callback: the one new negative (the positive is not encoded again)
    assert len(calls) == 3


def test_batches_and_images_per_prompt(tiny_sd):
    set_scheduler(tiny_sd, "euler_a")
    prompts = ["a red cat", "a green dog"]
    kw = dict(prompt=prompts, num_images_per_prompt=2)
    expected_neg, _ = latents_of(stock, tiny_sd, negative_prompt=[NEG, NEG], **kw)
    expected_none, ref_steps = latents_of(stock, tiny_sd, **kw)
    got0, _ = latents_of(generate, tiny_sd, negative_prompt=NEG, negative_start=0, **kw)
    gotN, _ = latents_of(generate, tiny_sd, negative_prompt=NEG, negative_start=N, **kw)
    assert got0.shape[0] == 4
    assert torch.equal(got0, expected_neg) and torch.equal(gotN, expected_none)
    _, steps2 = latents_of(generate, tiny_sd, negative_prompt=NEG, negative_start=2, **kw)
    assert torch.equal(steps2[1], ref_steps[1]) and not torch.equal(steps2[2], ref_steps[2])


def test_per_prompt_negatives_each_with_its_schedule(tiny_sd):
    set_scheduler(tiny_sd, "ddim")
    prompts = ["a red cat", "a green dog"]
    got, _ = latents_of(generate, tiny_sd, prompt=prompts, negative_prompt=[NEG, "[:hat:2]"])
    off, _ = latents_of(stock, tiny_sd, prompt=prompts, negative_prompt=[NEG, ""])
    on, _ = latents_of(stock, tiny_sd, prompt=prompts, negative_prompt=[NEG, "hat"])
    assert not torch.equal(got[1], off[1]) and not torch.equal(got[1], on[1])


class _UNetBatches:
    def __init__(self, unet):
        self.sizes = []
        self.handle = unet.register_forward_pre_hook(lambda m, args: self.sizes.append(args[0].shape[0]))


def test_cfg_off_skips_the_negative_pass_until_start(tiny_sd):
    set_scheduler(tiny_sd, "euler")
    no_cfg, no_cfg_steps = latents_of(stock, tiny_sd, prompt=PROMPT, guidance_scale=1.0)
    full, _ = latents_of(stock, tiny_sd, prompt=PROMPT, negative_prompt=NEG)
    assert torch.equal(latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=N, cfg_off=True)[0], no_cfg)
    assert torch.equal(latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=0, cfg_off=True)[0], full)
    batches = _UNetBatches(tiny_sd.unet)
    try:
        _, steps = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=2, cfg_off=True)
    finally:
        batches.handle.remove()
    assert batches.sizes == [1, 1] + [2] * (N - 2)  # one evaluation per step while off, two after
    assert torch.equal(steps[1], no_cfg_steps[1]) and not torch.equal(steps[2], no_cfg_steps[2])
    assert tiny_sd.guidance_scale == 7.5


def test_cfg_off_turns_off_again_after_end(tiny_sd):
    set_scheduler(tiny_sd, "ddim")
    batches = _UNetBatches(tiny_sd.unet)
    try:
        latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=1, negative_end=3, cfg_off=True)
    finally:
        batches.handle.remove()
    assert batches.sizes == [1, 2, 2, 1, 1, 1]


def test_user_pipeline_callback_still_runs(tiny_sd):
    set_scheduler(tiny_sd, "ddim")
    seen = []

    def mine(pipe, i, t, kw):
        seen.append(i)
        return {}

    generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=2, num_inference_steps=N,
             output_type="latent", callback_on_step_end=mine)
    assert seen == list(range(N))


def test_returns_the_pipelines_own_output_type(tiny_sd):
    from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

    set_scheduler(tiny_sd, "ddim")
    out = generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=1, num_inference_steps=2)
    assert isinstance(out, StableDiffusionPipelineOutput)
    assert out.images[0].size == (32, 32)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(negative_start=N + 1), "negative_start"),
        (dict(negative_start=1.5), "negative_start"),
        (dict(negative_start=-1), "negative_start"),
        (dict(negative_start=3, negative_end=3), "negative_end"),
        (dict(negative_start=3, negative_end=2), "negative_end"),
        (dict(negative_prompt="[:x:0.2"), "negative_prompt"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(guidance_scale=1.0), "guidance_scale"),
        (dict(not_an_argument=1), "not_an_argument"),
        (dict(negative_start=2, cfg_off=True, ip_adapter_image_embeds=[torch.zeros(1, 1, 8)]), "cfg_off"),
        (dict(negative_start=2, guidance_scale_with_negative=1.0), "guidance_scale_with_negative"),
        (dict(negative_start=2, guidance_scale_with_negative="10"), "guidance_scale_with_negative"),
        (dict(negative_start=2, guidance_scale_with_negative=True), "guidance_scale_with_negative"),
        (dict(negative_start=2, guidance_scale_with_negative=float("nan")), "guidance_scale_with_negative"),
        (dict(negative_prompt=None, guidance_scale_with_negative=9.0), "guidance_scale_with_negative"),
        # A1111 prompt editing is timed in the negative only; in the prompt it would be read as emphasis.
        (dict(prompt="a [red:blue:0.5] cat"), "prompt"),
        (dict(prompt=["a cat", "[a|b] dog"]), "prompt"),
    ],
)
def test_bad_input_names_the_argument(tiny_sd, kwargs, argument):
    call = dict(prompt=PROMPT, negative_prompt=NEG, num_inference_steps=N, output_type="latent")
    call.update(kwargs)
    with pytest.raises(InputError) as err:
        generate(tiny_sd, **call)
    assert err.value.argument == argument


def test_step_scale_per_key():
    """CFG's scale at a step: the one rule the callback, the engine and generate()'s mid-run check share."""
    from negschedule.callbacks import step_scale

    off, on, mixed = (None, None), ("x", "y"), ("x", None)
    assert step_scale(off, 7.5) == 7.5 and step_scale(on, 7.5) == 7.5
    assert step_scale(off, 7.5, 11.0) == 7.5  # no negative acts: the user's scale
    assert step_scale(on, 7.5, 11.0) == 11.0 and step_scale(mixed, 7.5, 11.0) == 11.0  # one prompt's negative acts
    assert step_scale(off, 7.5, 11.0, cfg_off=True) is None and step_scale(on, 7.5, None, cfg_off=True) == 7.5


# --- SDXL: pooled embeddings are timed too; "off" is the pipeline's forced zeros ---

XL = dict(height=32, width=32)


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m", "heun"])
def test_sdxl_bit_exact(tiny_sdxl, scheduler):
    set_scheduler(tiny_sdxl, scheduler)
    expected_neg, _ = latents_of(stock, tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, **XL)
    expected_none, ref_steps = latents_of(stock, tiny_sdxl, prompt=PROMPT, **XL)
    assert torch.equal(latents_of(generate, tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_start=0, **XL)[0], expected_neg)
    assert torch.equal(latents_of(generate, tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_start=N, **XL)[0], expected_none)
    _, steps = latents_of(generate, tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_start=3, **XL)
    assert all(torch.equal(steps[s], ref_steps[s]) for s in range(3))
    assert not torch.equal(steps[3], ref_steps[3])


def test_sdxl_pooled_negative_is_swapped(tiny_sdxl):
    set_scheduler(tiny_sdxl, "euler")
    seen = []

    def spy(pipe, i, t, kw):
        seen.append(kw["add_text_embeds"].clone())
        return {}

    generate(tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_start=2, num_inference_steps=4,
             output_type="latent", callback_on_step_end=spy,
             callback_on_step_end_tensor_inputs=["add_text_embeds"], **XL)
    # The user's callback sees the tensors after ours: passes 0 has zeros (off), pass 1 already the negative.
    assert torch.count_nonzero(seen[0][0]) == 0
    assert torch.count_nonzero(seen[1][0]) > 0 and torch.equal(seen[1][1], seen[0][1])


def test_sdxl_cfg_off(tiny_sdxl):
    set_scheduler(tiny_sdxl, "euler")
    no_cfg, _ = latents_of(stock, tiny_sdxl, prompt=PROMPT, guidance_scale=1.0, **XL)
    got, _ = latents_of(generate, tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_start=N, cfg_off=True, **XL)
    assert torch.equal(got, no_cfg)
    mid, _ = latents_of(generate, tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_start=3, cfg_off=True, **XL)
    assert not torch.equal(mid, no_cfg)


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl"])
def test_callback_dropped_into_a_plain_pipeline_call(request, fixture):
    from negschedule import NegativeScheduleCallback

    pipe = request.getfixturevalue(fixture)
    set_scheduler(pipe, "dpmpp_2m")
    extra = XL if fixture == "tiny_sdxl" else {}
    cb = NegativeScheduleCallback.for_call(PROMPT, NEG, num_inference_steps=N, guidance_scale=7.5, negative_start=2)
    by_hand = pipe(prompt=PROMPT, num_inference_steps=N, output_type="latent",
                   generator=torch.Generator().manual_seed(3), **cb.pipeline_kwargs(pipe), **extra).images
    by_generate = generate(pipe, prompt=PROMPT, negative_prompt=NEG, negative_start=2, num_inference_steps=N, guidance_scale=7.5,
                           output_type="latent", generator=torch.Generator().manual_seed(3), **extra).images
    assert torch.equal(by_hand, by_generate)


def test_several_negatives_each_in_its_window(tiny_sd):
    from negschedule import NegativeWindow

    set_scheduler(tiny_sd, "dpmpp_2m")
    # cat on steps 0..1, dog from step 2: the same as A1111's [cat:dog:1] (cat while step <= 1).
    windows, _ = latents_of(generate, tiny_sd, prompt=PROMPT,
                            negative_windows=[NegativeWindow("cat", 0, 2), NegativeWindow("dog", 2)])
    a1111, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt="[cat:dog:1]")
    assert torch.equal(windows, a1111)
    # Overlapping windows join their texts: "cat, dog" from step 3 on.
    both, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt="cat",
                         negative_windows=[("dog", 3, None)])
    joined, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt="[cat:cat, dog:2]")
    assert torch.equal(both, joined)


def _reference_loop(pipe, k: int, seed: int, steps: int = N, scale: float = 7.5, scale_on: float | None = None,
                    end: int | None = None) -> torch.Tensor:
    """A loop written from scratch (not the pipeline's, not the engine's): "" before step k, NEG in
    [k, end), guided with ``scale_on`` there (default ``scale``)."""
    dtype = pipe.unet.dtype
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps, device=pipe.device)
    assert len(scheduler.timesteps) == steps  # one pass per step for the schedulers used here
    generator = torch.Generator().manual_seed(seed)
    shape = (1, pipe.unet.config.in_channels, 16, 16)
    # Drawn on the CPU and moved, as diffusers' randn_tensor does with a CPU generator.
    latents = torch.randn(shape, generator=generator, dtype=dtype).to(pipe.device) * scheduler.init_noise_sigma
    with torch.no_grad():
        ids = lambda text: pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                          return_tensors="pt").input_ids.to(pipe.device)
        positive = pipe.text_encoder(ids(PROMPT))[0]
        empty = pipe.text_encoder(ids(""))[0]
        negative = pipe.text_encoder(ids(NEG))[0]
        for step, t in enumerate(scheduler.timesteps):
            on = k <= step < (steps if end is None else end)
            uncond = negative if on else empty
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps = pipe.unet(model_input, t, encoder_hidden_states=torch.cat([uncond, positive])).sample
            eps_u, eps_c = eps.chunk(2)
            w = scale_on if on and scale_on is not None else scale
            eps = eps_u + w * (eps_c - eps_u)
            kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
            latents = scheduler.step(eps, t, latents, **kwargs).prev_sample
    return latents


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("k", [0, 2, N])
def test_matches_an_independent_reference_loop(tiny_sd, scheduler, k):
    set_scheduler(tiny_sd, scheduler)
    expected = _reference_loop(tiny_sd, k, seed=5)
    got, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=k, seed=5)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("k, end", [(0, None), (2, None), (1, 4), (N, None)])
def test_scale_with_negative_matches_an_independent_reference_loop(tiny_sd, scheduler, k, end):
    # The scale changes exactly at the steps where the negative acts: from its start, back at its end.
    set_scheduler(tiny_sd, scheduler)
    expected = _reference_loop(tiny_sd, k, seed=5, scale_on=11.0, end=end)
    got, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=k, negative_end=end,
                        guidance_scale_with_negative=11.0, seed=5)
    assert torch.equal(got, expected)
    assert tiny_sd.guidance_scale == 7.5  # the pipeline is left at the call's own scale
    if k < N:
        plain, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=k, negative_end=end, seed=5)
        assert not torch.equal(got, plain)


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl"])
def test_scale_with_negative_from_step_0_is_the_stock_call_at_that_scale(request, fixture):
    pipe = request.getfixturevalue(fixture)
    size = XL if fixture == "tiny_sdxl" else {}
    expected, _ = latents_of(stock, pipe, prompt=PROMPT, negative_prompt=NEG, guidance_scale=9.0, **size)
    got, _ = latents_of(generate, pipe, prompt=PROMPT, negative_prompt=NEG, negative_start=0, guidance_scale_with_negative=9.0, **size)
    assert torch.equal(got, expected)
    # A negative that never starts never changes the scale either.
    expected, _ = latents_of(stock, pipe, prompt=PROMPT, **size)
    got, _ = latents_of(generate, pipe, prompt=PROMPT, negative_prompt=NEG, negative_start=6, guidance_scale_with_negative=9.0, **size)
    assert torch.equal(got, expected)


def test_scale_with_negative_and_cfg_off(tiny_sd):
    # CFG off (one evaluation) before the start, the with-negative scale from it.
    set_scheduler(tiny_sd, "ddim")
    got, mine = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=3, cfg_off=True,
                           guidance_scale_with_negative=10.0)
    plain, off = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=3, cfg_off=True)
    assert all(torch.equal(a, b) for a, b in zip(mine[:3], off[:3]))  # untouched before the start (CFG off there)
    assert not torch.equal(mine[3], off[3])  # the scale acts from the start's own step
    assert not torch.equal(got, plain)


def test_custom_timesteps_set_the_step_count(tiny_sd):
    set_scheduler(tiny_sd, "euler")
    sigmas = [14.6, 6.0, 2.5, 1.0, 0.3]  # Euler: the last sigma ends the last step, so 4 steps
    _, reference = latents_of(stock, tiny_sd, prompt=PROMPT, sigmas=sigmas)
    _, got = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=2, sigmas=sigmas)
    assert len(got) == len(reference) == 4
    assert all(torch.equal(got[s], reference[s]) for s in range(2)) and not torch.equal(got[2], reference[2])
    with pytest.raises(InputError) as err:  # start 5 lies beyond the 4 steps the sigmas make
        generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=5, sigmas=sigmas, output_type="latent")
    assert err.value.argument == "negative_start"


NEG_2 = "purple hat"


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m"])
def test_sdxl_negative_prompt_2_is_timed_with_the_negative(tiny_sdxl, scheduler):
    set_scheduler(tiny_sdxl, scheduler)
    both = dict(prompt=PROMPT, negative_prompt=NEG, negative_prompt_2=NEG_2, **XL)
    expected_both, _ = latents_of(stock, tiny_sdxl, **both)
    expected_first, _ = latents_of(stock, tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, **XL)
    expected_none, ref_steps = latents_of(stock, tiny_sdxl, prompt=PROMPT, **XL)
    assert not torch.equal(expected_both, expected_first)  # the second encoder's negative matters
    assert torch.equal(latents_of(generate, tiny_sdxl, negative_start=0, **both)[0], expected_both)
    assert torch.equal(latents_of(generate, tiny_sdxl, negative_start=N, **both)[0], expected_none)
    _, steps = latents_of(generate, tiny_sdxl, negative_start=3, **both)
    assert all(torch.equal(steps[s], ref_steps[s]) for s in range(3))
    # From step 3 on the second encoder's negative acts too: step 3 differs from a switch to negative_prompt alone.
    _, first_only = latents_of(generate, tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_start=3, **XL)
    assert not torch.equal(steps[3], first_only[3])


def test_negative_prompt_2_bad_input(tiny_sd, tiny_sdxl):
    with pytest.raises(InputError) as err:
        generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_prompt_2=NEG_2, negative_start=1, num_inference_steps=N, output_type="latent")
    assert err.value.argument == "negative_prompt_2"  # SD 1.x has no second text encoder
    with pytest.raises(InputError) as err:
        generate(tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_prompt_2=[NEG_2, NEG_2], num_inference_steps=N, output_type="latent", **XL)
    assert err.value.argument == "negative_prompt_2"
    with pytest.raises(InputError, match="plain CFG only"):
        generate(tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_prompt_2=NEG_2, negative_start="auto", num_inference_steps=N, output_type="latent", **XL)


# img2img and inpainting run the last int(strength * N) steps of the N-step schedule. Their steps are
# counted from 0 at the first step they run, as A1111 counts them in img2img (its denoiser's step
# counter starts at 0 there, and fractions are of the N steps).
I2I_N, I2I_STRENGTH, I2I_RUN = 10, 0.6, 6


def _image_to_image(kind, tiny_sd, tiny_sdxl):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionXLImg2ImgPipeline

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    if kind == "sdxl_img2img":
        pipe, extra = StableDiffusionXLImg2ImgPipeline(**tiny_sdxl.components), {}
    elif kind == "sd_depth2img":
        from diffusers import StableDiffusionDepth2ImgPipeline, UNet2DConditionModel

        torch.manual_seed(0)  # SD 2's depth model: a UNet that also reads the depth map (5 input channels)
        unet = UNet2DConditionModel.from_config({**tiny_sd.unet.config, "in_channels": 5}).eval()
        unet.to(tiny_sd.device, tiny_sd.unet.dtype)  # where the shared pipeline runs (a GPU in gpu_check.sh)
        parts = {k: v for k, v in tiny_sd.components.items() if k in ("vae", "text_encoder", "tokenizer", "scheduler")}
        pipe = StableDiffusionDepth2ImgPipeline(unet=unet, depth_estimator=None, feature_extractor=None, **parts)
        extra = {"depth_map": torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(1))}
    elif kind == "sd_inpaint":
        pipe, extra = StableDiffusionInpaintPipeline(**tiny_sd.components), {"mask_image": mask}
    else:
        pipe, extra = StableDiffusionImg2ImgPipeline(**tiny_sd.components), {}
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, "heun" if kind == "sd_img2img_heun" else "euler" if kind == "sdxl_img2img" else "ddim")
    return pipe, dict(prompt=PROMPT, image=image, strength=I2I_STRENGTH, num_inference_steps=I2I_N, **extra)


@pytest.mark.parametrize("kind", ["sd_img2img", "sd_img2img_heun", "sd_inpaint", "sdxl_img2img", "sd_depth2img"])
def test_image_to_image_counts_the_steps_it_runs_from_zero(tiny_sd, tiny_sdxl, kind):
    pipe, run = _image_to_image(kind, tiny_sd, tiny_sdxl)
    expected_neg, _ = latents_of(stock, pipe, negative_prompt=NEG, **run)
    expected_none, ref_steps = latents_of(stock, pipe, **run)
    assert len(ref_steps) == I2I_RUN
    assert torch.equal(latents_of(generate, pipe, negative_prompt=NEG, negative_start=0, **run)[0], expected_neg)
    # Past the steps it runs, the negative never acts (A1111's [:x:0.6] at strength 0.6 never switches either).
    assert torch.equal(latents_of(generate, pipe, negative_prompt=NEG, negative_start=I2I_RUN, **run)[0], expected_none)
    got, steps = latents_of(generate, pipe, negative_prompt=NEG, negative_start=2, **run)
    assert all(torch.equal(steps[s], ref_steps[s]) for s in range(2)) and not torch.equal(steps[2], ref_steps[2])
    # A fraction is of the N-step schedule: 0.3 of 10 is the run's step 3.
    assert torch.equal(latents_of(generate, pipe, negative_prompt=NEG, negative_start=0.3, **run)[0],
                       latents_of(generate, pipe, negative_prompt=NEG, negative_start=3, **run)[0])
    assert not torch.equal(got, expected_neg) and not torch.equal(got, expected_none)


def _sigma_reference_loop(pipe, sigma_start: float, sigma_end: float, seed: int, steps: int = N, scale: float = 7.5):
    """A loop written from scratch that decides by noise level, as ComfyUI's conditioning range does:
    the negative while ``sigma_end <= sigma <= sigma_start`` at the step's own sigma, "" elsewhere."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps, device=pipe.device)
    assert len(scheduler.timesteps) == steps
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, pipe.unet.config.in_channels, 16, 16), generator=generator, dtype=pipe.unet.dtype)
    latents = latents.to(pipe.device) * scheduler.init_noise_sigma
    alphas = scheduler.alphas_cumprod.double()
    with torch.no_grad():
        ids = lambda text: pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                          return_tensors="pt").input_ids.to(pipe.device)
        positive, empty, negative = (pipe.text_encoder(ids(t))[0] for t in (PROMPT, "", NEG))
        for step, t in enumerate(scheduler.timesteps):
            if hasattr(scheduler, "sigmas"):
                sigma = float(scheduler.sigmas[step])
            else:
                sigma = float(((1 - alphas[int(t)]) / alphas[int(t)]) ** 0.5)
            uncond = negative if sigma_end <= sigma <= sigma_start else empty
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps_u, eps_c = pipe.unet(model_input, t, encoder_hidden_states=torch.cat([uncond, positive])).sample.chunk(2)
            kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
            latents = scheduler.step(eps_u + scale * (eps_c - eps_u), t, latents, **kwargs).prev_sample
    return latents


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m"])
def test_noise_level_bounds_match_a_loop_that_decides_by_sigma(tiny_sd, scheduler):
    """negative_start=TimestepPercent(p) / negative_end=Sigma(s) act where ComfyUI's start_percent / a sigma bound would."""
    from negschedule import Sigma, TimestepPercent

    from .test_schedule import _comfy_percent_to_sigma

    set_scheduler(tiny_sd, scheduler)
    sigma_start = _comfy_percent_to_sigma(0.3, tiny_sd.scheduler.alphas_cumprod.double())
    expected = _sigma_reference_loop(tiny_sd, sigma_start, 1.0, seed=5)
    got, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=TimestepPercent(0.3),
                        negative_end=Sigma(1.0), seed=5)
    assert torch.equal(got, expected)
    # The window is a real one here: neither the whole run nor nothing.
    assert not torch.equal(got, latents_of(stock, tiny_sd, prompt=PROMPT, negative_prompt=NEG, seed=5)[0])
    assert not torch.equal(got, latents_of(stock, tiny_sd, prompt=PROMPT, seed=5)[0])


def test_noise_level_bounds_bad_input(tiny_sd, tiny_sdxl):
    from negschedule import NegativeWindow, Sigma, TimestepPercent

    set_scheduler(tiny_sd, "euler")
    with pytest.raises(InputError) as err:  # sigma 2 lies after sigma 1's step would start: an empty window
        generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=Sigma(1.0), negative_end=Sigma(2.0), num_inference_steps=N)
    assert err.value.argument == "negative_end" and "sigma:2" in str(err.value)
    with pytest.raises(InputError) as err:
        generate(tiny_sd, prompt=PROMPT, negative_windows=[NegativeWindow(NEG, TimestepPercent(1.5))], num_inference_steps=N)
    assert err.value.argument == "negative_start"
    with pytest.raises(InputError) as err:  # a value of the wrong type names itself too
        generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=Sigma("3"), num_inference_steps=N)
    assert err.value.argument == "negative_start" and "sigma:'3'" in str(err.value)
    pipe, run = _image_to_image("sd_img2img", tiny_sd, tiny_sdxl)
    with pytest.raises(InputError, match="text-to-image"):
        generate(pipe, negative_prompt=NEG, negative_start=TimestepPercent(0.2), **run)


def test_noise_level_window_on_heun_uses_each_steps_first_pass(tiny_sd):
    """Heun evaluates twice per step; a sigma bound falls on a step by that step's own (first-pass) sigma."""
    from negschedule import Sigma
    from negschedule.noise_levels import step_sigmas

    set_scheduler(tiny_sd, "heun")
    try:
        scheduler = tiny_sd.scheduler
        scheduler.set_timesteps(N)
        sigmas = step_sigmas(scheduler)
        assert sigmas == [float(scheduler.sigmas[2 * s]) for s in range(N)] and sigmas == sorted(sigmas, reverse=True)
        got, _ = latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=Sigma(sigmas[2]))
        assert torch.equal(got, latents_of(generate, tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=2)[0])
    finally:
        set_scheduler(tiny_sd, "ddim")  # the shared pipeline's own scheduler, for the tests after this one


def test_sdxl_refiner_with_denoising_start_counts_from_its_first_step(tiny_sd, tiny_sdxl):
    """The ensemble-of-experts refiner (denoising_start=0.6 of 10 steps: the last 4) counts its steps from 0 too."""
    pipe, run = _image_to_image("sdxl_img2img", tiny_sd, tiny_sdxl)
    run = {**{k: v for k, v in run.items() if k != "strength"}, "denoising_start": 0.6}
    expected_neg, _ = latents_of(stock, pipe, negative_prompt=NEG, **run)
    expected_none, ref_steps = latents_of(stock, pipe, **run)
    assert len(ref_steps) == 4
    assert torch.equal(latents_of(generate, pipe, negative_prompt=NEG, negative_start=0, **run)[0], expected_neg)
    assert torch.equal(latents_of(generate, pipe, negative_prompt=NEG, negative_start=4, **run)[0], expected_none)
    _, steps = latents_of(generate, pipe, negative_prompt=NEG, negative_start=1, **run)
    assert torch.equal(steps[0], ref_steps[0]) and not torch.equal(steps[1], ref_steps[1])


def assert_timed_like_stock(pipe, run: dict, negative: str = NEG, k: int = 3):
    """The core's rules on another pipeline: start 0 is the stock call with the negative (for a text the
    stock encoder reads), start N the stock call without one, and a start at k leaves the first k
    steps untouched and changes step k. Returns the stock call's final and per-step latents."""
    expected_none, ref_steps = latents_of(stock, pipe, **run)
    if negative == NEG:
        assert torch.equal(latents_of(generate, pipe, negative_prompt=NEG, negative_start=0, **run)[0],
                           latents_of(stock, pipe, negative_prompt=NEG, **run)[0])
    assert torch.equal(latents_of(generate, pipe, negative_prompt=negative, negative_start=N, **run)[0], expected_none)
    _, steps = latents_of(generate, pipe, negative_prompt=negative, negative_start=k, **run)
    assert all(torch.equal(steps[s], ref_steps[s]) for s in range(k)) and not torch.equal(steps[k], ref_steps[k])
    return expected_none, ref_steps


def _controlnet(kind, tiny_sd, tiny_sdxl):
    """The tiny pipeline's parts with a ControlNet made from its UNet (diffusers' ``from_unet``), and a control picture."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    base = tiny_sdxl if kind == "sdxl" else tiny_sd
    torch.manual_seed(5)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 16)).eval()
    with torch.no_grad():  # a new ControlNet's output convolutions are zero (no effect until trained): give them weights
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(std=0.1)
    cls = StableDiffusionXLControlNetPipeline if kind == "sdxl" else StableDiffusionControlNetPipeline
    pipe = cls(**base.components, controlnet=controlnet).to(base.device, base.unet.dtype)
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, "euler" if kind == "sdxl" else "dpmpp_2m")
    control = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return pipe, dict(prompt=PROMPT, image=control, height=32, width=32)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_controlnet_pipelines_time_the_negative_as_text_to_image(tiny_sd, tiny_sdxl, kind):
    """A ControlNet pipeline runs the same loop with one more network: the timed negative acts on it
    bit for bit as on the text-to-image pipeline (the engine's rules refuse it: they call the UNet alone)."""
    pipe, run = _controlnet(kind, tiny_sd, tiny_sdxl)
    _, ref_steps = assert_timed_like_stock(pipe, run)
    # The control acts: the plain pipeline on the same parts and scheduler differs from step 0 on.
    plain = tiny_sdxl if kind == "sdxl" else tiny_sd
    set_scheduler(plain, "euler" if kind == "sdxl" else "dpmpp_2m")
    _, plain_steps = latents_of(stock, plain, **{k: v for k, v in run.items() if k != "image"})
    assert not torch.equal(plain_steps[0], ref_steps[0])
    with pytest.raises(InputError, match="pipe"):
        generate(pipe, negative_prompt=NEG, guidance="perp_neg", generator=torch.Generator().manual_seed(0), **run)


def _pag(kind, tiny_sd, tiny_sdxl):
    """The tiny pipeline's parts as diffusers' perturbed-attention-guidance pipeline (PAG on the mid block)."""
    from diffusers import StableDiffusionPAGPipeline, StableDiffusionXLPAGPipeline

    base = tiny_sdxl if kind == "sdxl" else tiny_sd
    cls = StableDiffusionXLPAGPipeline if kind == "sdxl" else StableDiffusionPAGPipeline
    pipe = cls(**base.components, pag_applied_layers=["mid"])
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, "euler" if kind == "sdxl" else "ddim")
    return pipe, dict(prompt=PROMPT, pag_scale=3.0, height=32, width=32)


@pytest.mark.parametrize("negative", [NEG, "(blue:1.3) hat"])  # the stock encoder, and A1111 weights (our encoder)
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_pag_pipelines_time_the_negative(tiny_sd, tiny_sdxl, kind, negative):
    """PAG stacks [negative; positive; positive] (the last for the perturbed pass): only the negative block is swapped."""
    pipe, run = _pag(kind, tiny_sd, tiny_sdxl)
    expected_none, _ = assert_timed_like_stock(pipe, run, negative)
    # PAG acts: without it the same call gives other latents.
    assert not torch.equal(latents_of(stock, pipe, **{**run, "pag_scale": 0.0})[0], expected_none)
    with pytest.raises(InputError, match="cfg_off"):
        generate(pipe, negative_prompt=negative, negative_start=3, cfg_off=True, **run)


def test_pipelines_without_a_step_callback_take_a_whole_run_negative_and_refuse_a_timed_one(tiny_sd):
    """Self-attention guidance's pipeline has no callback_on_step_end: a negative on every step (or none) is the
    stock call, a start in between is refused in one line instead of the pipeline's TypeError."""
    from diffusers import StableDiffusionSAGPipeline

    pipe = StableDiffusionSAGPipeline(**tiny_sd.components)
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, "ddim")
    assert torch.equal(latents_of_call(generate, pipe, negative_prompt=NEG, negative_start=0),
                       latents_of_call(stock, pipe, negative_prompt=NEG))
    assert torch.equal(latents_of_call(generate, pipe, negative_prompt=NEG, negative_start=N), latents_of_call(stock, pipe))
    # CFG off while the negative is off, and it is off throughout: the stock call at guidance 1.
    assert torch.equal(latents_of_call(generate, pipe, negative_prompt=NEG, negative_start=N, cfg_off=True),
                       latents_of_call(stock, pipe, guidance_scale=1.0))
    for timed in (dict(negative_start=3), dict(negative_start=3, cfg_off=True), dict(negative_start=0, negative_end=2)):
        with pytest.raises(InputError, match="pipe=.*callback_on_step_end"):
            latents_of_call(generate, pipe, negative_prompt=NEG, **timed)


def latents_of_call(fn, pipe, **kwargs):
    """The final latents of one call with a fixed seed, for pipelines that take no step callback."""
    return fn(pipe, prompt=PROMPT, num_inference_steps=N, output_type="latent", generator=torch.Generator().manual_seed(1), **kwargs).images


@pytest.mark.parametrize("family", ["StableDiffusion3Pipeline", "FluxPipeline"])
def test_other_families_are_refused_not_half_swapped(family):
    """SD3 and Flux keep pooled / T5 conditioning where the callback does not look: refused before sampling."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    cls = getattr(diffusers, family)
    parts = {name: None for name in inspect.signature(cls.__init__).parameters if name != "self"}
    pipe = cls(**{**parts, "scheduler": FlowMatchEulerDiscreteScheduler()})  # no weights: the refusal needs none
    with pytest.raises(InputError, match=f"pipe='{family}'"):
        generate(pipe, prompt=PROMPT, negative_prompt=NEG, negative_start=2, num_inference_steps=N)


def _tiny_ip_adapter(unet, embed_dim: int = 16, seed: int = 0) -> dict:
    """An IP-Adapter state dict in the original layout for ``unet`` (what ``load_ip_adapter`` reads from a
    file): the image projection, and ``to_k_ip`` / ``to_v_ip`` for each cross-attention layer, keyed 1, 3, 5, ..."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    projection = {"proj.weight": torch.randn(cross * 4, embed_dim, generator=g) * 0.1, "proj.bias": torch.zeros(cross * 4),
                  "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    widths = unet.config.block_out_channels
    layers, key = {}, 1
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = widths[-1]
        elif name.startswith("up_blocks"):
            hidden = widths[::-1][int(name.split(".")[1])]
        else:
            hidden = widths[int(name.split(".")[1])]
        layers[f"{key}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.1
        layers[f"{key}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.1
        key += 2
    return {"image_proj": projection, "ip_adapter": layers}


def test_ip_adapter_image_embeddings_stay_while_the_negative_is_timed():
    """The IP-Adapter's image embeddings ([negative image; image]) are prepared once, apart from the text:
    the timed negative swaps the text alone, bit for bit as without the adapter."""
    from negschedule.tiny import build_tiny_sd

    pipe = build_tiny_sd(seed=0)  # its own: loading an adapter changes the UNet's attention processors
    pipe.unet._load_ip_adapter_weights([_tiny_ip_adapter(pipe.unet)])
    embeds = torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(3))
    run = dict(prompt=PROMPT, ip_adapter_image_embeds=[embeds])
    expected_none, _ = assert_timed_like_stock(pipe, run)
    pipe.set_ip_adapter_scale(0.0)  # the adapter acts: at scale 0 the same call differs
    assert not torch.equal(latents_of(stock, pipe, **run)[0], expected_none)
    with pytest.raises(InputError, match="ip_adapter_image_embeds"):  # the engine's rules do not carry it
        generate(pipe, negative_prompt=NEG, guidance="perp_neg", generator=torch.Generator().manual_seed(0), **run)


def test_instruct_pix2pix_is_refused(tiny_sd):
    """InstructPix2Pix stacks [prompt; negative; negative] and has no encode_prompt: refused, not mis-swapped."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(**tiny_sd.components)  # refused before its UNet is used
    with pytest.raises(InputError, match="encode_prompt"):
        generate(pipe, prompt=PROMPT, image=torch.rand(1, 3, 32, 32), negative_prompt=NEG, negative_start=2, num_inference_steps=N)


@pytest.mark.parametrize("negative", [NEG, "(blue:1.3) hat"])  # the stock encoder, and A1111 weights (our encoder)
def test_animatediff_repeats_the_timed_negative_per_frame(negative):
    """AnimateDiff repeats every row of [negative; positive] once per frame: the swapped negative is
    repeated the same way, bit for bit as the stock pipeline's."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNetMotionModel

    from negschedule.tiny import build_tiny_sd

    from .conftest import StepRecorder

    base = build_tiny_sd(seed=0)
    torch.manual_seed(0)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                            motion_num_attention_heads=2, motion_max_seq_length=8)
    parts = {k: v for k, v in base.components.items() if k in ("vae", "text_encoder", "tokenizer", "scheduler")}
    pipe = AnimateDiffPipeline(unet=UNetMotionModel.from_unet2d(base.unet, adapter), motion_adapter=adapter, **parts)
    pipe.set_progress_bar_config(disable=True)

    def frames_of(fn, **kwargs):
        recorder = StepRecorder()
        out = fn(pipe, prompt=PROMPT, num_frames=4, height=32, width=32, num_inference_steps=N, output_type="latent",
                 generator=torch.Generator().manual_seed(1), callback_on_step_end=recorder,
                 callback_on_step_end_tensor_inputs=["latents"], **kwargs)
        return out.frames, recorder.latents

    expected_none, ref_steps = frames_of(stock)
    if negative == NEG:
        assert torch.equal(frames_of(generate, negative_prompt=NEG, negative_start=0)[0], frames_of(stock, negative_prompt=NEG)[0])
    assert torch.equal(frames_of(generate, negative_prompt=negative, negative_start=N)[0], expected_none)
    got, steps = frames_of(generate, negative_prompt=negative, negative_start=3)
    assert all(torch.equal(steps[s], ref_steps[s]) for s in range(3)) and not torch.equal(steps[3], ref_steps[3])
    if negative == NEG:
        # A hand-timed reference: the stock pipeline's own [negative; positive] (per frame), swapped in
        # by a plain callback after pass 2.
        held = {}

        def grab(p, i, t, kw):
            held.setdefault("embeds", kw["prompt_embeds"].clone())
            return {}

        call = dict(prompt=PROMPT, num_frames=4, height=32, width=32, num_inference_steps=N, output_type="latent",
                    callback_on_step_end_tensor_inputs=["prompt_embeds"])
        pipe(negative_prompt=NEG, generator=torch.Generator().manual_seed(1), callback_on_step_end=grab, **call)
        swap = lambda p, i, t, kw: {"prompt_embeds": held["embeds"]} if i == 2 else {}  # noqa: E731
        out = pipe(generator=torch.Generator().manual_seed(1), callback_on_step_end=swap, **call)
        assert torch.equal(got, out.frames)


def test_pipelines_whose_loop_keeps_its_own_scale_are_found():
    import diffusers

    from negschedule.callbacks import reads_scale_every_pass

    for name in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionImg2ImgPipeline",
                 "StableDiffusionInpaintPipeline", "StableDiffusionControlNetPipeline", "StableDiffusionPAGPipeline"):
        assert reads_scale_every_pass(getattr(diffusers, name)), name
    for name in ("StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionControlNetInpaintPipeline"):
        assert not reads_scale_every_pass(getattr(diffusers, name)), name


def test_scale_with_negative_refused_where_the_loop_keeps_its_own_scale(tiny_sd, tiny_sdxl):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    text_pipe, run = _controlnet("sd", tiny_sd, tiny_sdxl)
    pipe = StableDiffusionControlNetImg2ImgPipeline(**text_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    picture = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    call = dict(prompt=PROMPT, image=picture, control_image=run["image"], height=32, width=32, strength=1.0,
                num_inference_steps=N, negative_prompt=NEG, output_type="latent")
    with pytest.raises(InputError) as err:
        generate(pipe, negative_start=2, guidance_scale_with_negative=10.0, **call)
    assert err.value.argument == "guidance_scale_with_negative" and "StableDiffusionControlNetImg2ImgPipeline" in str(err.value)
    # A negative on every step never changes the scale: the call simply runs at it.
    expected = pipe(guidance_scale=10.0, generator=torch.Generator().manual_seed(0), **call).images
    got = generate(pipe, negative_start=0, guidance_scale_with_negative=10.0, generator=torch.Generator().manual_seed(0), **call).images
    assert torch.equal(got, expected)
