"""Every guidance rule end to end on tiny pipelines, through generate() and the CLI, with its model evaluations counted."""

from __future__ import annotations

import pytest
import torch

from negschedule import InputError, generate
from negschedule.auto import AutoStart, Signal
from negschedule.guidance import Guidance, GuidanceRule
from negschedule.guided import sample_guided

N = 4
PROMPT = "a red cat"
NEG = "blue hat"
KW = dict(prompt=PROMPT, num_inference_steps=N, output_type="latent")


def run(pipe, guidance, **kw):
    return generate(pipe, negative_prompt=NEG, guidance=guidance, generator=torch.Generator().manual_seed(3), **{**KW, **kw})


@pytest.mark.parametrize("pipe_name", ["tiny_sd", "tiny_sdxl"])
@pytest.mark.parametrize(
    "guidance, per_step",
    [("negative_scale", 3), ("perp_neg", 3), ("dng", 3), (Guidance(GuidanceRule.SIGMA_WINDOW, sigma_min=0.0), 2)],
    ids=["negative_scale", "perp_neg", "dng", "sigma_window"],
)
def test_rule_runs_end_to_end_and_counts_its_evaluations(request, pipe_name, guidance, per_step):
    pipe = request.getfixturevalue(pipe_name)
    out = run(pipe, guidance)
    assert out.images.shape[0] == 1 and torch.isfinite(out.images).all()
    assert out.model_evaluations == per_step * N
    assert Guidance.of(guidance).evaluations_per_step() == per_step


def test_cfg_and_timed_stay_on_the_stock_path_bit_exact(tiny_sd):
    ref = generate(tiny_sd, negative_prompt=NEG, negative_start=2, generator=torch.Generator().manual_seed(3), **KW).images
    for name in ("cfg", "timed", GuidanceRule.TIMED, None):
        out = run(tiny_sd, name, negative_start=2)
        assert torch.equal(out.images, ref)
        assert not hasattr(out, "model_evaluations")  # the stock pipeline's own output, untouched


def test_negative_scale_reduces_to_the_stock_negative_prompt(tiny_sd):
    # eps_u + g(p - u) - (g - 1)(n - u) == eps_n + g(p - n): the stock negative prompt, to float rounding.
    ref = generate(tiny_sd, negative_prompt=NEG, generator=torch.Generator().manual_seed(3), **KW).images
    out = run(tiny_sd, Guidance(GuidanceRule.NEGATIVE_SCALE, negative_scale=7.5 - 1))
    assert torch.allclose(out.images, ref, atol=1e-4)
    assert not torch.allclose(run(tiny_sd, "negative_scale").images, ref, atol=1e-3)


def test_three_branch_rules_with_a_zero_negative_are_plain_cfg(tiny_sd):
    ref = generate(tiny_sd, generator=torch.Generator().manual_seed(3), **KW).images
    for rule in (GuidanceRule.NEGATIVE_SCALE, GuidanceRule.PERP_NEG, GuidanceRule.DNG):
        out = run(tiny_sd, Guidance(rule, negative_scale=0.0))
        assert torch.allclose(out.images, ref, atol=1e-4), rule


def test_timed_three_branch_rule_costs_two_before_the_start(tiny_sd):
    out = run(tiny_sd, "perp_neg", negative_start=2)
    assert out.model_evaluations == 2 * 2 + 3 * 2


def _reference_start(pipe, seed: int):
    """What a loop written from scratch starts from: the pipeline's scheduler set to N steps, the seed's
    initial latents, and a text encoding with the pipeline's padding."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(N, device=pipe.device)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, pipe.unet.config.in_channels, 16, 16), generator=generator, dtype=pipe.unet.dtype)
    latents = latents.to(pipe.device) * scheduler.init_noise_sigma

    def encode(text):
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(pipe.device)
        return pipe.text_encoder(ids)[0]

    return scheduler, latents, encode


def _a1111_ngms_loop(pipe, sigma_min: float, seed: int = 3, scale: float = 7.5) -> torch.Tensor:
    """A1111's "Negative Guidance minimum sigma" written from scratch (its CFGDenoiser's rule, not the engine):
    below ``sigma_min`` the negative is skipped - the positive prediction alone - on odd steps only."""
    scheduler, latents, encode = _reference_start(pipe, seed)
    with torch.no_grad():
        positive, negative = encode(PROMPT), encode(NEG)
        for step, t in enumerate(scheduler.timesteps):
            a = float(scheduler.alphas_cumprod[int(t)])
            sigma = ((1 - a) / a) ** 0.5
            x = scheduler.scale_model_input(latents, t)
            if step % 2 == 1 and sigma < sigma_min:
                eps = pipe.unet(x, t, encoder_hidden_states=positive).sample
            else:
                eps_neg, eps_pos = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([negative, positive])).sample.chunk(2)
                eps = eps_neg + scale * (eps_pos - eps_neg)
            latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def _three_branch_loop(pipe, combine, seed: int = 3) -> torch.Tensor:
    """A three-branch sampler written from scratch: the empty prompt, the prompt and the negative, one
    UNet call each per step, combined by ``combine(eps_u, eps_pos, eps_neg)`` (the peer's formula)."""
    scheduler, latents, encode = _reference_start(pipe, seed)
    with torch.no_grad():
        empty, positive, negative = (encode(text) for text in ("", PROMPT, NEG))
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t)
            eps_u, eps_pos, eps_neg = (pipe.unet(x, t, encoder_hidden_states=c).sample for c in (empty, positive, negative))
            latents = scheduler.step(combine(eps_u, eps_pos, eps_neg), t, latents).prev_sample
    return latents


def test_three_branch_rules_match_the_peers_loops(tiny_sd):
    from negschedule.schedulers import set_scheduler

    set_scheduler(tiny_sd, "ddim")  # the fixture is shared: other tests leave other samplers on it
    g = 7.5

    def kohya(u, p, n, neg_scale=4.0):  # sd-scripts gen_img_diffusers.py with --negative_scale: "" is the real uncond
        return u + g * (p - u) - neg_scale * (n - u)

    def comfy_perp_neg(u, p, n, neg_scale=1.0):  # ComfyUI's PerpNeg, on one image: the projection over all of it
        pos, neg = p - u, n - u
        perp = neg - (torch.mul(neg, pos).sum() / torch.norm(pos) ** 2) * pos
        return u + g * (pos - perp * neg_scale)

    # To float rounding (the engine batches the branches; latents up to ~15, differences ~3e-5).
    out = run(tiny_sd, Guidance(GuidanceRule.NEGATIVE_SCALE, negative_scale=4.0))
    assert torch.allclose(out.images, _three_branch_loop(tiny_sd, kohya), atol=1e-4)
    out = run(tiny_sd, "perp_neg")
    assert torch.allclose(out.images, _three_branch_loop(tiny_sd, comfy_perp_neg), atol=1e-4)
    # The loops are not trivially alike: the two rules give different images.
    assert not torch.allclose(_three_branch_loop(tiny_sd, kohya), _three_branch_loop(tiny_sd, comfy_perp_neg), atol=1e-1)


def test_sigma_min_every_other_is_a1111s_default(tiny_sd):
    # Every sigma below the minimum: A1111 skips the negative on steps 1 and 3 and guides on 0 and 2.
    g = Guidance(GuidanceRule.SIGMA_WINDOW, sigma_min=1e6, sigma_min_every_other=True)
    out = run(tiny_sd, g)
    assert out.model_evaluations == 2 * (N // 2) + 1 * (N // 2)
    assert torch.allclose(out.images, _a1111_ngms_loop(tiny_sd, 1e6), atol=1e-5)
    # The same minimum at every step ("NGMS all steps") is the positive prediction alone throughout.
    assert run(tiny_sd, Guidance(GuidanceRule.SIGMA_WINDOW, sigma_min=1e6)).model_evaluations == N
    # A minimum below every sigma changes nothing: the stock negative prompt.
    ref = generate(tiny_sd, negative_prompt=NEG, generator=torch.Generator().manual_seed(3), **KW).images
    assert torch.equal(run(tiny_sd, Guidance(GuidanceRule.SIGMA_WINDOW, sigma_min=0.0, sigma_min_every_other=True)).images, ref)


def test_sigma_window_drops_the_unconditional_pass_outside(tiny_sd):
    # A window no sigma reaches: the positive prediction alone, one evaluation per step.
    out = run(tiny_sd, Guidance(GuidanceRule.SIGMA_WINDOW, sigma_min=1e6))
    assert out.model_evaluations == N
    cond_only = generate(tiny_sd, guidance_scale=1.0, generator=torch.Generator().manual_seed(3), **KW).images
    assert torch.allclose(out.images, cond_only, atol=1e-5)
    # An unbounded window is the stock negative prompt.
    ref = generate(tiny_sd, negative_prompt=NEG, generator=torch.Generator().manual_seed(3), **KW).images
    assert torch.equal(run(tiny_sd, Guidance(GuidanceRule.SIGMA_WINDOW)).images, ref)


def test_dng_tracks_a_posterior_per_step(tiny_sd):
    res = sample_guided(tiny_sd, "dng", [3], negative_prompt=NEG, **KW)
    trace = res.traces[3]
    assert [t["step"] for t in trace] == list(range(N))
    assert all(1e-6 <= t["posterior"] <= 0.8 for t in trace)


# threshold -2: starts at min_step 1 (probed steps 0, 1); threshold 2: never fires, forced at max_start (step 2).
@pytest.mark.parametrize("threshold, expected, evaluations", [(-2.0, 1, 3 * 2 + 2 * 2), (2.0, N // 2, 3 * 2 + 2 * 2)])
def test_auto_alignment_start_and_cost(tiny_sd, threshold, expected, evaluations):
    auto = AutoStart(signal=Signal.ALIGNMENT, threshold=threshold, min_step=1, max_start=0.5)
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto, **KW)
    start = res.starts[3]
    assert start == expected
    # Probing costs 3 evaluations per step until the start, 2 after; at most 1 + max_start/2 of plain CFG.
    assert res.model_evaluations == evaluations
    assert res.model_evaluations <= auto.cost_bound() * 2 * N
    # The image equals a fixed start at the chosen step (up to batching rounding).
    fixed = generate(tiny_sd, negative_prompt=NEG, negative_start=start, generator=torch.Generator().manual_seed(3), **KW).images
    assert torch.allclose(res.latents[3], fixed, atol=1e-4)


def test_auto_detector_signal_costs_nothing_extra(tiny_sd):
    seen = []

    def detector(image):
        seen.append(image.size)
        return len(seen) >= 2  # "sees" the concept at the second probed step

    auto = AutoStart(signal=Signal.DETECTOR, detector=detector, min_step=1, max_start=1.0)
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto, **KW)
    assert res.starts[3] == 3  # seen in step 2's prediction: the negative acts from step 3
    assert res.model_evaluations == 2 * N
    fixed = generate(tiny_sd, negative_prompt=NEG, negative_start=3, generator=torch.Generator().manual_seed(3), **KW).images
    assert torch.equal(res.latents[3], fixed)


def test_bad_guidance_input(tiny_sd):
    with pytest.raises(InputError, match="guidance"):
        run(tiny_sd, "sld")
    with pytest.raises(InputError, match="negative_prompt"):
        generate(tiny_sd, guidance="perp_neg", **KW)
    with pytest.raises(InputError, match="negative_start"):
        run(tiny_sd, "cfg", negative_start="soon")
    with pytest.raises(InputError, match="negative_start"):
        run(tiny_sd, "perp_neg", negative_start="auto")
    with pytest.raises(InputError, match="concept"):
        # "blue hat" is no toy-world concept for the default detector
        run(tiny_sd, "cfg", negative_start=AutoStart(signal=Signal.DETECTOR))
    # The default signal (attention) needs no detector: any concept, any model.
    out = run(tiny_sd, "cfg", negative_start="auto")
    assert 1 <= out.negative_start <= N // 2 and out.model_evaluations <= 1.25 * 2 * N


def test_cli_guidance_flag(tmp_path, capsys):
    from PIL import Image

    from negschedule.cli import main

    out = tmp_path / "p.png"
    code = main(["generate", "--prompt", PROMPT, "--negative-prompt", NEG, "--guidance", "perp_neg", "--negative-scale", "2",
                 "--steps", "2", "--out", str(out)])
    assert code == 0 and out.exists()
    params = Image.open(out).text["parameters"]
    assert "Guidance: perp_neg" in params and "Negative scale: 2.0" in params
    bad = tmp_path / "bad.png"
    assert main(["generate", "--prompt", PROMPT, "--negative-prompt", NEG, "--guidance", "nope", "--out", str(bad)]) == 2
    assert "guidance=" in capsys.readouterr().err and not bad.exists()


def test_auto_run_and_delay(tiny_sd):
    auto = AutoStart(signal=Signal.DETECTOR, detector=lambda image: True, min_step=0, run=2, delay=1, max_start=1.0)
    kw = {**KW, "num_inference_steps": 6}
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto, **kw)
    assert res.starts[3] == 3  # seen at steps 0 and 1 -> decided at 1 -> next step 2, plus a delay of 1
    assert len(res.traces[3]) == 2 and res.model_evaluations == 2 * 6
    fixed = generate(tiny_sd, negative_prompt=NEG, negative_start=3, generator=torch.Generator().manual_seed(3), **kw).images
    assert torch.equal(res.latents[3], fixed)
    # The cap: a late plan is cut to max_start.
    late = AutoStart(signal=Signal.DETECTOR, detector=lambda image: True, min_step=0, delay=5, max_start=0.5)
    assert sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=late, **kw).starts[3] == 3


def test_auto_settings_through_generate(tiny_sd):
    auto = AutoStart(signal=Signal.ALIGNMENT, threshold=-2.0, min_step=1)
    out = run(tiny_sd, None, negative_start=auto)
    assert out.negative_start == 1 and out.model_evaluations == 3 * 2 + 2 * (N - 2)
    fixed = generate(tiny_sd, negative_prompt=NEG, negative_start=1, generator=torch.Generator().manual_seed(3), **KW).images
    assert torch.allclose(out.images, fixed, atol=1e-4)


def test_auto_attention_signal(tiny_sd):
    processors = dict(tiny_sd.unet.attn_processors)
    auto = AutoStart(signal=Signal.ATTENTION, attention_threshold=0.0, min_step=1)
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto, **KW)
    assert res.starts[3] == 1 and res.model_evaluations == 3 * 2 + 2 * (N - 2)
    assert [0.1 <= t["attention"] <= 1.0 for t in res.traces[3]] == [True, True]
    assert dict(tiny_sd.unet.attn_processors).keys() == processors.keys()
    assert all(type(p) is type(processors[k]) for k, p in tiny_sd.unet.attn_processors.items())  # restored
    fixed = generate(tiny_sd, negative_prompt=NEG, negative_start=1, generator=torch.Generator().manual_seed(3), **KW).images
    assert torch.allclose(res.latents[3], fixed, atol=1e-4)


def test_cli_auto_start_recorded(tmp_path):
    from PIL import Image

    from negschedule.cli import main

    out = tmp_path / "a.png"
    assert main(["generate", "--prompt", PROMPT, "--negative-prompt", NEG, "--negative-start", "auto", "--steps", "4", "--out", str(out)]) == 0
    params = Image.open(out).text["parameters"]
    assert "Negative start: auto" in params and "Auto start: " in params


def test_rollout_decision_searches_forward_then_picks_midpoints():
    from negschedule.auto import probe_steps, rollout_decision, rollout_extra_bound

    probes = probe_steps((0.3, 0.7), 10)
    assert probes == (3, 7)
    assert rollout_decision(probes, 10, {}) == ("probe", 3)
    assert rollout_decision(probes, 10, {3: True}) == ("probe", 7)
    assert rollout_decision(probes, 10, {3: True, 7: False}) == ("start", 5)
    assert rollout_decision(probes, 10, {3: True, 7: True}) == ("start", 9)
    assert rollout_decision(probes, 10, {3: False}) == ("probe", 0)
    assert rollout_decision(probes, 10, {3: False, 0: True}) == ("start", 1)
    assert rollout_decision(probes, 10, {3: False, 0: False}) == ("start", 10)  # no start removes it: keep structure
    # Worst case at 20 steps: two probes of 3 evaluations and a replay of 3 steps: 12 = 0.3 of 40.
    assert rollout_extra_bound(probes, 10, jumps=2) == 12
    assert AutoStart(signal=Signal.ROLLOUT).cost_bound(20) == pytest.approx(1.3)


def test_rollout_verified_starts_only_where_a_look_ahead_said_removed():
    from negschedule.auto import pooled_start, rollout_earliest, rollout_extra_bound, rollout_verified

    probes = (3, 7)
    assert rollout_verified(probes, 10, {}) == ("probe", 3)
    assert rollout_verified(probes, 10, {3: True}) == ("probe", 7)
    assert rollout_verified(probes, 10, {3: True, 7: False}) == ("start", 3)  # the last checked start, not 5
    assert rollout_verified(probes, 10, {3: True, 7: True}) == ("start", 7)
    assert rollout_verified(probes, 10, {3: False}) == ("probe", 0)
    assert rollout_verified(probes, 10, {3: False, 0: True}) == ("start", 0)
    assert rollout_verified(probes, 10, {3: False, 0: False}) == ("start", 10)  # no start removes it: keep structure
    # Every start it makes was answered "removed" (or is the no-removal fallback), over all answer patterns.
    for mask in range(8):
        truth = {0: bool(mask & 1), 3: bool(mask & 2), 7: bool(mask & 4)}
        asked = {}
        while (move := rollout_verified(probes, 10, asked))[0] == "probe":
            asked[move[1]] = truth[move[1]]
        assert move[1] == 10 or asked[move[1]]
    # Pooling and the cost bound take the rule: the earliest a fresh search can settle on is 0 now.
    assert rollout_earliest(probes, 10, {}, rollout_verified) == 0
    assert pooled_start(probes, 10, [{3: True, 7: False}, {3: True}], rollout_verified) == 3
    # Worst case at 20 steps: probes 3 and 7 (3 evaluations each) and a replay of steps 3..7 (5 steps).
    assert rollout_extra_bound(probes, 10, 2, rollout_verified) == 16
    assert AutoStart(signal=Signal.ROLLOUT, choice="verified").cost_bound(20) == pytest.approx(1.4)


def test_rollout_gate_asks_step_0_once_and_starts_there_or_late():
    from negschedule.auto import pooled_start, rollout_earliest, rollout_extra_bound, rollout_gate

    probes = (3, 7)  # not used by the gate
    assert rollout_gate(probes, 10, {}) == ("probe", 0)
    assert rollout_gate(probes, 10, {0: True}) == ("start", 0)
    assert rollout_gate(probes, 10, {0: False}) == ("start", 10)  # the negative would not remove it: keep structure
    # Pooled per prompt: step 0 as soon as one image's look-ahead removes; the latest when none does.
    assert pooled_start(probes, 6, [{0: False}, {0: True}], rollout_gate) == 0
    assert pooled_start(probes, 6, [{0: False}, {0: False}], rollout_gate) == 6
    assert pooled_start(probes, 6, [{0: False}, {}], rollout_gate) is None  # the other may still say 0
    assert rollout_earliest(probes, 6, {}, rollout_gate) == 0
    # One look-ahead (3 evaluations at 2 jumps) and, for a start at 0, step 0 sampled again (2).
    assert rollout_extra_bound(probes, 10, 2, rollout_gate) == 5
    assert AutoStart(signal=Signal.ROLLOUT, choice="gate").cost_bound(20) == pytest.approx(1.125)


@pytest.mark.parametrize("present, expected", [(False, 0), (True, 4)], ids=["removes", "does-not"])
def test_auto_rollout_gate_is_bit_exact_to_its_fixed_start(tiny_sd, present, expected):
    calls = []

    def detector(image):
        calls.append(image.size)
        return present

    auto = AutoStart(signal=Signal.ROLLOUT, detector=detector, choice="gate")  # 8 steps: latest 4
    kw = {**KW, "num_inference_steps": 8}
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto, **kw)
    assert res.starts[3] == expected and len(calls) == 1  # one look-ahead, from step 0
    fixed = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start=expected, **kw)
    assert torch.equal(res.latents[3], fixed.latents[3])
    assert res.model_evaluations <= auto.cost_bound(8) * 2 * 8


def test_rollout_choice_is_checked():
    with pytest.raises(InputError, match="choice"):
        AutoStart(signal=Signal.ROLLOUT, choice="closest")
    with pytest.raises(InputError, match="choice"):
        AutoStart(signal=Signal.ATTENTION, choice="verified")  # a setting the signal does not read


@pytest.mark.parametrize("answers, expected", [((False, True), 1), ((False, False), 3), ((True, False), 0)], ids=["middle", "late", "early"])
def test_auto_rollout_verified_is_bit_exact_to_its_fixed_start(tiny_sd, answers, expected):
    # 8 steps: latest 4, probes at 1 and 3 ("present" flags in probe order, as below).
    calls = []

    def detector(image):
        calls.append(image.size)
        return answers[min(len(calls), 2) - 1]

    auto = AutoStart(signal=Signal.ROLLOUT, detector=detector, choice="verified")
    kw = {**KW, "num_inference_steps": 8}
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto, **kw)
    assert res.starts[3] == expected
    fixed = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start=expected, **kw)
    assert torch.equal(res.latents[3], fixed.latents[3])
    assert res.model_evaluations <= auto.cost_bound(8) * 2 * 8


@pytest.mark.parametrize("answers", [(True, False), (False, True), (False, False), (True, True)], ids=["early", "middle", "late", "never"])
def test_auto_rollout_backtracks_bit_exact_to_a_fixed_start(tiny_sd, answers):
    # 8 steps, max_start 0.5 -> latest 4, probes (0.3, 0.7) -> steps 1, 3 (and 0 when 1 fails).
    # The detector's answers are "present" flags, in probe order: first probe, then the next one.
    n = 8
    calls = []

    def detector(image):
        calls.append(image.size)
        return answers[min(len(calls), 2) - 1]

    auto = AutoStart(signal=Signal.ROLLOUT, detector=detector)
    kw = {**KW, "num_inference_steps": n}
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto, **kw)
    # present at 1 -> probe 0: absent -> start 0 (midpoint of 0, 1); absent at 1, present at 3 -> 2;
    # present at 1 and at 0 -> no start removes it -> latest 4; absent at 1 and 3 -> (3 + 4 + 1) // 2 = 4.
    expected = {(True, False): 0, (False, True): 2, (True, True): 4, (False, False): 4}[answers]
    assert res.starts[3] == expected
    assert len(calls) == 2
    # Going back to a snapshot and sampling on from it gives exactly the fixed start's latents.
    fixed = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start=expected, **kw)
    assert torch.equal(res.latents[3], fixed.latents[3])
    assert res.model_evaluations <= auto.cost_bound(n) * 2 * n
    assert res.model_evaluations > 2 * n  # the look-aheads are counted


def test_pooled_start_waits_until_no_search_can_settle_earlier():
    from negschedule.auto import pooled_start, rollout_earliest

    probes = (3, 7)
    assert rollout_earliest(probes, 10, {}) == 1  # absent at 3, present at 0: start 1
    assert rollout_earliest(probes, 10, {3: True}) == 5
    assert rollout_earliest(probes, 10, {3: False, 0: False}) == 10
    assert pooled_start(probes, 10, [{3: True, 7: True}, {3: False, 0: True}]) == 1
    assert pooled_start(probes, 10, [{3: True}, {3: False, 0: False}]) is None  # the first may still settle on 5
    assert pooled_start(probes, 10, [{3: True, 7: False}, {3: True}]) == 5  # the other cannot go below 5
    assert pooled_start(probes, 10, [{3: True}, {}]) is None


@pytest.mark.parametrize(
    "present, expected",
    [
        # Per call, in lock-step order. Seed A present at 1, so it probes 0 at once: absent -> A settles
        # on 0, and B (absent at 1) can settle no earlier than 2: both start at 0, decided at step 1.
        ((True, False, False), 0),
        # Both absent at 1; at 3 A is absent (settles on 4) and B present (settles on 2): both start at 2.
        ((False, False, False, True), 2),
    ],
    ids=["first-image-early", "second-image-earlier"],
)
def test_per_prompt_rollout_shares_the_earliest_start(tiny_sd, present, expected):
    calls = []

    def detector(image):
        calls.append(image.size)
        return present[len(calls) - 1]

    n = 8  # latest start 4, probes at steps 1 and 3
    kw = {**KW, "num_inference_steps": n}
    auto = AutoStart(signal=Signal.ROLLOUT, detector=detector, per_prompt=True)
    res = sample_guided(tiny_sd, "cfg", [3, 4], negative_prompt=NEG, negative_start="auto", auto=auto, **kw)
    assert res.starts == {3: expected, 4: expected}
    assert len(calls) == len(present)
    # Each image is exactly the one a fixed start gives it.
    fixed = sample_guided(tiny_sd, "cfg", [3, 4], negative_prompt=NEG, negative_start=expected, **kw)
    for seed in (3, 4):
        assert torch.equal(res.latents[seed], fixed.latents[seed])
    assert res.model_evaluations == sum(res.evaluations_per_seed.values()) > 2 * 2 * n


def test_auto_start_refuses_an_end_it_would_ignore(tiny_sd):
    with pytest.raises(InputError, match="negative_end"):
        run(tiny_sd, None, negative_start="auto", negative_end=2)
    assert run(tiny_sd, None, negative_start="auto", negative_end=N).negative_start is not None  # the last step: no end


def test_per_prompt_start_is_refused_for_the_forward_signals():
    with pytest.raises(InputError, match="per_prompt"):
        AutoStart(signal=Signal.ATTENTION, per_prompt=True)


def test_per_prompt_images_reach_the_callback_as_one_batch(tiny_sd):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append(tuple(tensors["latents"].shape))
        return {"latents": tensors["latents"] * 0 if i == N - 1 else tensors["latents"]}  # replaced after the last pass

    auto = AutoStart(signal=Signal.ROLLOUT, detector=lambda image: False, per_prompt=True)
    res = sample_guided(tiny_sd, "cfg", [3, 4], negative_prompt=NEG, negative_start="auto", auto=auto,
                        callback_on_step_end=callback, **KW)
    assert seen and all(shape[0] == 2 for shape in seen)
    assert all(torch.count_nonzero(res.latents[seed]) == 0 for seed in (3, 4))  # the returned batch, split back


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m", "heun"])
def test_auto_rollout_backtracking_restores_scheduler_and_noise_state(tiny_sd, scheduler):
    # Ancestral noise (euler_a), multistep history (dpmpp_2m) and two passes per step (heun) all
    # live in the scheduler or the generator: going back to a snapshot must restore both.
    from negschedule.schedulers import set_scheduler

    original = tiny_sd.scheduler
    try:
        set_scheduler(tiny_sd, scheduler)
        answers = iter([False, True])  # absent at the first probe, present at the second: start between them
        auto = AutoStart(signal=Signal.ROLLOUT, detector=lambda image: next(answers))
        kw = {**KW, "num_inference_steps": 8}
        res = sample_guided(tiny_sd, "cfg", [5], negative_prompt=NEG, negative_start="auto", auto=auto, **kw)
        assert res.starts[5] == 2
        fixed = sample_guided(tiny_sd, "cfg", [5], negative_prompt=NEG, negative_start=2, **kw)
        assert torch.equal(res.latents[5], fixed.latents[5])
    finally:
        tiny_sd.scheduler = original


def test_engine_calls_the_step_callback_as_the_stock_pipeline_does(tiny_sd):
    # Same timing through both routes: the stock pipeline (timed CFG) and the engine (auto that
    # starts at step 1) hand the callback the same pass indices and, to float noise, the same latents.
    def recorder(seen):
        def callback(pipe, i, t, tensors):
            seen.append((i, int(t), tensors["latents"].clone()))
            return {}
        return callback

    stock, engine = [], []
    generate(tiny_sd, negative_prompt=NEG, negative_start=1, generator=torch.Generator().manual_seed(3), callback_on_step_end=recorder(stock), **KW)
    auto = AutoStart(signal=Signal.ALIGNMENT, threshold=-2.0, min_step=1)
    run(tiny_sd, None, negative_start=auto, callback_on_step_end=recorder(engine))
    assert [(i, t) for i, t, _ in engine] == [(i, t) for i, t, _ in stock] and len(stock) == N
    assert all(torch.allclose(a, b, atol=1e-4) for (_, _, a), (_, _, b) in zip(engine, stock))


def test_engine_step_callback_may_replace_the_latents(tiny_sd):
    plain = run(tiny_sd, "perp_neg").images
    zeroed = run(tiny_sd, "perp_neg", callback_on_step_end=lambda pipe, i, t, tensors: {"latents": tensors["latents"] * 0} if i == N - 1 else {}).images
    assert not torch.equal(plain, zeroed) and torch.count_nonzero(zeroed) == 0
    with pytest.raises(InputError, match="callback_on_step_end_tensor_inputs"):
        run(tiny_sd, "perp_neg", callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])


def test_rollout_reports_replayed_passes_to_the_callback(tiny_sd):
    # Absent at the first probe, present at the second: the start (2) is behind, so the loop goes
    # back to step 2's snapshot and the callback sees passes 2.. again; its last report is the final pass.
    answers = iter([False, True])
    auto = AutoStart(signal=Signal.ROLLOUT, detector=lambda image: next(answers))
    seen = []
    run(tiny_sd, None, negative_start=auto, num_inference_steps=8, callback_on_step_end=lambda pipe, i, t, tensors: seen.append(i) or {})
    assert seen[-6:] == [2, 3, 4, 5, 6, 7] and len(seen) > 8 and seen[:2] == [0, 1]


def test_engine_draws_the_pipelines_progress_bar(tiny_sd, capsys):
    import sys

    tiny_sd.set_progress_bar_config(disable=False, file=sys.stderr)
    try:
        run(tiny_sd, "perp_neg")
    finally:
        tiny_sd.set_progress_bar_config(disable=True)
    assert f"{N}/{N}" in capsys.readouterr().err


def test_rollout_policy_replay_pools_like_the_sampler():
    # benchmarks/rollout_policies.py replays searches on recorded answers; its pooled start must be
    # the earliest start any image's own search settles on, and its per-image cost the search's.
    import importlib.util
    import itertools
    from pathlib import Path

    from negschedule.auto import _search_with, rollout_decision, rollout_extra_bound, rollout_gate, rollout_verified

    path = Path(__file__).parents[1] / "benchmarks" / "rollout_policies.py"
    spec = importlib.util.spec_from_file_location("rollout_policies", path)
    policies = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(policies)
    probes, latest = (3, 7), 10
    patterns = [dict(zip((0, 3, 7), bits)) for bits in itertools.product((False, True), repeat=3)]
    for decide in (rollout_decision, rollout_verified, rollout_gate):
        worst = 0
        for a, b in itertools.product(patterns, repeat=2):
            answers = [[a.get(k, False) for k in range(latest + 1)], [b.get(k, False) for k in range(latest + 1)]]
            start, asked, now = policies.lock_step(answers, decide, probes, latest)
            assert start == min(_search_with(probes, latest, p, decide)[0] for p in (a, b))
            single, known, at = policies.lock_step(answers[:1], decide, probes, latest)
            assert single == _search_with(probes, latest, a, decide)[0]
            worst = max(worst, len(known[0]) * 3 + ((at - single + 1) * 2 if single <= at else 0))
        assert worst == rollout_extra_bound(probes, latest, 2, decide)  # the replayed cost reaches the bound, never more


def test_default_auto_is_the_look_ahead_where_a_detector_reads_the_negative_else_attention(tiny_sd):
    from negschedule import load_pipeline
    from negschedule.auto import toy_detector_reads
    from negschedule.toyworld.tokenizer import is_toyworld_tokenizer

    toy = load_pipeline()
    assert is_toyworld_tokenizer(toy.tokenizer) and not is_toyworld_tokenizer(tiny_sd.tokenizer)
    assert toy_detector_reads(toy, "moon") and toy_detector_reads(toy, "blue square")
    assert not toy_detector_reads(toy, "blurry")  # no word of the toy world: nothing to read
    assert not toy_detector_reads(tiny_sd, "moon")  # the toy detector cannot judge another model's pictures
    assert AutoStart().resolve(toy, "moon") == AutoStart(signal=Signal.ROLLOUT, per_prompt=True)
    assert AutoStart(max_start=0.3).resolve(toy, "blurry") == AutoStart(signal=Signal.ATTENTION, max_start=0.3)
    assert AutoStart().resolve(tiny_sd, NEG).signal is Signal.ATTENTION
    assert AutoStart(detector=bool).resolve(tiny_sd, NEG).signal is Signal.ROLLOUT  # a detector passed: the look-ahead
    assert AutoStart(signal="alignment").resolve(toy, "moon").signal is Signal.ALIGNMENT  # a signal named stays
    assert AutoStart().cost_bound(20) == max(AutoStart(signal="attention").cost_bound(), AutoStart(signal="rollout").cost_bound(20))
    with pytest.raises(InputError, match="not the default"):
        AutoStart(choice="verified")  # a search rule only with the rollout named: the default may not be one

    # "auto" runs as the rule it resolves to, bit for bit: the look-ahead shared by the seeds on the toy
    # model, the attention rule on another.
    kw = dict(prompt="night, a red square", num_inference_steps=10, output_type="latent")
    got = sample_guided(toy, "cfg", [0, 1], negative_prompt="moon", negative_start="auto", **kw)
    want = sample_guided(toy, "cfg", [0, 1], negative_prompt="moon", negative_start="auto",
                         auto=AutoStart(signal=Signal.ROLLOUT, per_prompt=True), **kw)
    assert got.starts == want.starts and got.starts[0] == got.starts[1]  # one start for the prompt's seeds
    assert all(torch.equal(got.latents[s], want.latents[s]) for s in (0, 1))
    got = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", **KW)
    want = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=AutoStart(signal=Signal.ATTENTION), **KW)
    assert got.starts == want.starts and torch.equal(got.latents[3], want.latents[3])


def test_scale_with_negative_in_the_engine_equals_the_stock_path(tiny_sd):
    # The engine's timed CFG (the loop "auto" and the sweeps share) against generate()'s stock call.
    kw = {**KW, "num_inference_steps": 6}
    ref = generate(tiny_sd, negative_prompt=NEG, negative_start=2, guidance_scale_with_negative=10.0,
                   generator=torch.Generator().manual_seed(3), **kw).images
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start=2, guidance_scale_with_negative=10.0, **kw)
    assert torch.equal(res.latents[3], ref)
    plain = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start=2, **kw)
    assert not torch.equal(plain.latents[3], ref)


@pytest.mark.parametrize("answers", [(True, False), (False, True), (False, False)], ids=["early", "middle", "late"])
def test_auto_with_a_scale_with_negative_is_bit_exact_to_its_fixed_start(tiny_sd, answers):
    calls = []

    def detector(image):
        calls.append(image.size)
        return answers[min(len(calls), 2) - 1]

    auto = AutoStart(signal=Signal.ROLLOUT, detector=detector)
    kw = {**KW, "num_inference_steps": 8, "guidance_scale_with_negative": 12.0}
    res = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto, **kw)
    fixed = sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start=res.starts[3], **kw)
    assert torch.equal(res.latents[3], fixed.latents[3])
    stock = generate(tiny_sd, negative_prompt=NEG, negative_start=res.starts[3], generator=torch.Generator().manual_seed(3), **kw).images
    assert torch.equal(res.latents[3], stock)


def test_look_ahead_previews_with_the_scale_with_negative(tiny_sd):
    # "Would a negative from here remove it?" is asked of the negative the sample will run.
    seen = {}
    for scale in (None, 12.0):
        pictures = []
        auto = AutoStart(signal=Signal.ROLLOUT, detector=lambda image: pictures.append(image) or True)
        sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, negative_start="auto", auto=auto,
                      guidance_scale_with_negative=scale, **{**KW, "num_inference_steps": 8, "output_type": "pil"})
        seen[scale] = [p.tobytes() for p in pictures]
    assert len(seen[None]) == len(seen[12.0]) and seen[None] != seen[12.0]


def test_scale_with_negative_bad_input(tiny_sd):
    with pytest.raises(InputError) as err:
        run(tiny_sd, "negative_scale", guidance_scale_with_negative=10.0)
    assert err.value.argument == "guidance_scale_with_negative"
    with pytest.raises(InputError) as err:
        sample_guided(tiny_sd, "cfg", [3], negative_start="auto", guidance_scale_with_negative=10.0, **KW)
    assert err.value.argument in ("guidance_scale_with_negative", "negative_prompt")
    with pytest.raises(InputError) as err:
        sample_guided(tiny_sd, "cfg", [3], negative_prompt=NEG, guidance_scale_with_negative=0.5, **KW)
    assert err.value.argument == "guidance_scale_with_negative"
