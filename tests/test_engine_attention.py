"""Cross-attention capture: sampling is bit-identical with it, and the maps are what they claim."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from negschedule import generate
from negschedule.attention import CrossAttentionCapture, attention_maps, token_positions
from negschedule.engine import Run, sample_runs
from negschedule.errors import InputError
from negschedule.schedulers import set_scheduler

PROMPT = "a red cat"
NEG = "blue hat"
N = 4


@pytest.mark.parametrize("fixture, scheduler", [("tiny_sd", "dpmpp_2m"), ("tiny_sd", "heun"), ("tiny_sdxl", "euler")])
def test_capture_does_not_change_the_output(request, fixture, scheduler):
    pipe = request.getfixturevalue(fixture)
    set_scheduler(pipe, scheduler)
    kw = dict(num_inference_steps=N, output_type="latent")
    if fixture == "tiny_sdxl":
        kw.update(height=32, width=32)
    before = dict(pipe.unet.attn_processors)
    expected = generate(pipe, prompt=PROMPT, negative_prompt=NEG, negative_start=2, generator=torch.Generator().manual_seed(0), **kw).images
    with CrossAttentionCapture(pipe.unet, [1, 2, 3], (16, 16)) as capture:
        capture.step = 0
        got = generate(pipe, prompt=PROMPT, negative_prompt=NEG, negative_start=2, generator=torch.Generator().manual_seed(0), **kw).images
        engine_got = sample_runs(pipe, [Run(NEG, 2)], [0], prompt=PROMPT, **kw).image(0, 0)
        assert capture.maps(), "nothing was captured"
    assert torch.equal(got, expected) and torch.equal(engine_got, expected)
    assert all(pipe.unet.attn_processors[name] is proc for name, proc in before.items())


def test_maps_of_all_tokens_sum_to_one_per_pixel(tiny_sd):
    set_scheduler(tiny_sd, "ddim")
    with CrossAttentionCapture(tiny_sd.unet, range(77), (16, 16)) as capture:
        capture.step = 0
        generate(tiny_sd, prompt=PROMPT, num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0))
    (maps,) = capture.maps().values()
    assert maps.shape == (2, 77, 16, 16)  # CFG rows, tokens, latent grid
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 16, 16), rtol=1e-5, atol=1e-5)


def test_attention_maps_per_step_and_token(tiny_sd, tmp_path):
    set_scheduler(tiny_sd, "euler_a")
    result = attention_maps(tiny_sd, prompt=PROMPT, tokens=["cat", "red"], negative_prompt=NEG, negative_tokens=["hat"],
                            negative_start=2, num_inference_steps=N, seed=3)
    expected = generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=2, num_inference_steps=N,
                        generator=torch.Generator().manual_seed(3)).images[0]
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    assert set(result.maps) == {"+cat", "+red", "-hat"}
    assert all(m.shape == (N, 32, 32) and np.isfinite(m).all() for m in result.maps.values())
    assert result.active["-hat"] == [False, False, True, True] and all(result.active["+cat"])
    assert not np.array_equal(result.maps["+cat"][0], result.maps["+red"][0])
    written = result.save(tmp_path)
    assert all(p.exists() for p in written)
    arrays = np.load(tmp_path / "maps.npz")
    assert np.array_equal(arrays["neg_hat"], result.maps["-hat"])
    assert json.loads((tmp_path / "attention.json").read_text())["active"]["-hat"][2] is True


def test_cfg_off_steps_have_no_negative_map(tiny_sd):
    set_scheduler(tiny_sd, "ddim")
    engine_kw = dict(num_inference_steps=N)
    # cfg_off is a Run option; attention_maps takes the generate()-style timing, so go through the capture directly.
    with CrossAttentionCapture(tiny_sd.unet, [1], (16, 16)) as capture:
        from negschedule.engine import Engine

        engine = Engine(tiny_sd, prompt=PROMPT, output_type="latent", **engine_kw)
        engine.on_branch_pass = lambda seed, runs, step: setattr(capture, "step", step)
        engine.sample([Run(NEG, 2, cfg_off=True)], [0])
    rows = [m.shape[0] for m in capture.maps().values()]
    assert rows == [1, 1, 2, 2]  # one positive row while CFG is off, then the CFG pair


def test_token_positions_and_bad_words(tiny_sd):
    ids = tiny_sd.tokenizer(PROMPT)["input_ids"]
    positions = token_positions(tiny_sd.tokenizer, PROMPT, "cat")
    assert ids[positions[0] : positions[-1] + 1] == tiny_sd.tokenizer("cat", add_special_tokens=False)["input_ids"]
    assert token_positions(tiny_sd.tokenizer, "a red (cat:1.3)", "cat") == positions
    with pytest.raises(InputError) as err:
        attention_maps(tiny_sd, prompt=PROMPT, tokens=["dog"], num_inference_steps=2)
    assert err.value.argument == "tokens"
    with pytest.raises(InputError) as err:
        attention_maps(tiny_sd, prompt=PROMPT, negative_tokens=["hat"], num_inference_steps=2)
    assert err.value.argument == "negative_tokens"


def test_cli_attention_writes_strips(tiny_sd, tmp_path):
    from negschedule.experiments.commands import main

    set_scheduler(tiny_sd, "ddim")
    tiny_sd.save_pretrained(tmp_path / "model")
    code = main(["attention", "--model", str(tmp_path / "model"), "--prompt", PROMPT, "--tokens", "cat",
                 "--negative-prompt", NEG, "--negative-tokens", "hat", "--negative-start", "1", "--steps", "3",
                 "--out", str(tmp_path / "att")])
    assert code == 0
    assert (tmp_path / "att" / "attention_pos_cat.png").exists() and (tmp_path / "att" / "attention_neg_hat.png").exists()
