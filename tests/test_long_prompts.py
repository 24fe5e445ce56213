"""A1111-style encoding: 75-token chunks, BREAK, comma back-off, emphasis, and generate() with them."""

from __future__ import annotations

import pytest
import torch

from negschedule import generate
from negschedule.errors import InputError
from negschedule.long_prompts import (
    PromptEncoder,
    WeightedConditioning,
    apply_emphasis,
    needs_a1111_encoding,
    tokenize_chunks,
)
from negschedule.schedulers import set_scheduler
from negschedule.tiny import build_tiny_sd, build_tiny_sdxl

from .conftest import latents_of, stock

N = 6
PROMPT = "a red cat"
XL = dict(height=32, width=32)
PHRASES = ["worst quality", "low quality", "extra fingers", "fewer fingers", "bad hands", "blurry"]
BASE = ", ".join(PHRASES * 2)  # about 130 tokens on the tiny character tokenizer


def _mean_like_clip(text_encoder):
    # The tiny encoder's final LayerNorm has zero bias, so every output token has mean 0 and A1111's
    # mean restore would divide by ~0. Real CLIP's learned bias makes the mean clearly non-zero.
    with torch.no_grad():
        bias = getattr(text_encoder, "text_model", text_encoder).final_layer_norm.bias
        bias.copy_(torch.linspace(-0.2, 0.8, bias.numel()))


@pytest.fixture(scope="module")
def sd():
    pipe = build_tiny_sd(seed=0)
    _mean_like_clip(pipe.text_encoder)
    set_scheduler(pipe, "ddim")
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    pipe = build_tiny_sdxl(seed=0)
    set_scheduler(pipe, "euler")
    return pipe


def n_tokens(pipe, text):
    return len(pipe.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def words(n, start=0):
    """``n`` one-token words (single letters), separated by spaces."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " ".join(letters[(start + i) % 26] for i in range(n))


class EncoderCalls:
    """Counts forward calls of a text encoder."""

    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --- tokenizing into chunks ---


def test_short_text_is_one_chunk_as_the_pipeline_tokenizes_it(sd):
    [chunk] = tokenize_chunks(sd, PROMPT, sd.tokenizer)
    expected = sd.tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
    assert list(chunk.ids) == expected and chunk.weights == (1.0,) * 77
    assert chunk.length == n_tokens(sd, PROMPT) + 2


def test_long_text_fills_75_token_chunks_each_wrapped_and_padded(sd):
    chunks = tokenize_chunks(sd, words(100), sd.tokenizer)
    tok = sd.tokenizer
    assert [c.length - 2 for c in chunks] == [75, 25]
    for chunk in chunks:
        assert len(chunk.ids) == 77 and chunk.ids[0] == tok.bos_token_id and chunk.ids[chunk.length - 1] == tok.eos_token_id
        assert set(chunk.ids[chunk.length :]) <= {tok.pad_token_id}
    assert list(chunks[1].ids) == tok(words(25, start=75), padding="max_length", max_length=77).input_ids


def test_sd2_style_padding_pads_after_eos_with_the_pad_token(sd):
    # SD 2.x tokenizers pad with "!" rather than EOS; each chunk pads as the tokenizer itself does.
    from transformers import CLIPTokenizer

    sd2 = CLIPTokenizer(vocab=sd.tokenizer.get_vocab(), merges=[], model_max_length=77, pad_token="!")
    chunks = tokenize_chunks(sd, words(80), sd2)
    assert list(chunks[1].ids) == sd2(words(5, start=75), padding="max_length", max_length=77).input_ids
    assert chunks[0].ids[-1] == sd2.eos_token_id and chunks[1].ids[-1] == sd2.pad_token_id != sd2.eos_token_id


def test_exactly_75_tokens_is_one_chunk(sd):
    assert len(tokenize_chunks(sd, words(75), sd.tokenizer)) == 1
    assert len(tokenize_chunks(sd, words(76), sd.tokenizer)) == 2


def test_break_starts_a_new_chunk(sd):
    chunks = tokenize_chunks(sd, "a b BREAK c", sd.tokenizer)
    assert [c.length - 2 for c in chunks] == [2, 1]
    assert len(tokenize_chunks(sd, "a b BREAK", sd.tokenizer)) == 1  # no empty chunk at the end, as A1111
    # Inside brackets A1111 weights the marker, and then it is the word "break" with weight -1.1, no break.
    [chunk] = tokenize_chunks(sd, "(a BREAK b)", sd.tokenizer)
    pieces = [(sd.tokenizer(word, add_special_tokens=False).input_ids, weight)
              for word, weight in (("a", 1.1), ("BREAK", -1.0 * 1.1), ("b", 1.1))]
    ids = [i for piece, _ in pieces for i in piece]
    assert chunk.length == len(ids) + 2
    assert list(chunk.ids[1 : len(ids) + 1]) == ids
    assert list(chunk.weights[1 : len(ids) + 1]) == [w for piece, w in pieces for _ in piece]


def test_weights_follow_the_tokens(sd):
    [chunk] = tokenize_chunks(sd, "a (b c:1.5) [d]", sd.tokenizer)
    assert chunk.weights[:6] == (1.0, 1.0, 1.5, 1.5, 1 / 1.1, 1.0)  # BOS, a, b, c, d, EOS


def test_comma_back_off_moves_the_last_phrase_to_the_next_chunk(sd):
    # 70 words, a comma, then 10 more: the chunk fills in mid-phrase 4 tokens after the comma.
    text = words(70) + ", " + words(10, start=3)
    with_backoff = tokenize_chunks(sd, text, sd.tokenizer)
    assert [c.length - 2 for c in with_backoff] == [71, 10]  # cut right after the comma
    without = tokenize_chunks(sd, text, sd.tokenizer, comma_backtrack=0)
    assert [c.length - 2 for c in without] == [75, 6]
    far = words(40) + ", " + words(45)  # the comma is 34 tokens back: more than 20, so no back-off
    assert [c.length - 2 for c in tokenize_chunks(sd, far, sd.tokenizer)] == [75, 11]


def test_needs_a1111_encoding(sd):
    assert not needs_a1111_encoding(sd, PROMPT)
    assert not needs_a1111_encoding(sd, "(glasses:1.0)")
    assert needs_a1111_encoding(sd, "(glasses:1.1)")
    assert needs_a1111_encoding(sd, "a BREAK b")
    assert not needs_a1111_encoding(sd, words(75)) and needs_a1111_encoding(sd, words(76))


# --- encoding ---


def test_apply_emphasis_scales_then_restores_the_mean():
    z = torch.randn(77, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    w = torch.ones(77)
    assert apply_emphasis(z, w) is z
    w[3:5] = 1.4
    out = apply_emphasis(z, w)
    scaled = z * w[:, None]
    assert torch.allclose(out, scaled * (z.mean() / scaled.mean()))
    assert torch.allclose(out.mean(), z.mean())


def test_plain_text_encodes_bit_exactly_like_encode_prompt(sd, sdxl):
    positive, negative = sd.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt="blue hat")
    cond = WeightedConditioning(sd, prompt=PROMPT)
    assert torch.equal(cond.positive(cond.off_key), positive)
    assert torch.equal(cond.negative(("blue hat",)).prompt_embeds, negative)
    # clip_skip as encode_prompt computes it (which itself fails on transformers 5: no .text_model).
    ids = sd.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = sd.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        skip = sd.text_encoder.final_layer_norm(hidden)
    assert torch.equal(PromptEncoder(sd, clip_skip=1).encode(PROMPT).embeds, skip)

    pos, neg, pooled, neg_pooled = sdxl.encode_prompt(
        PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt="blue hat"
    )
    cond = WeightedConditioning(sdxl, prompt=PROMPT)
    negative = cond.negative(("blue hat",))
    assert torch.equal(cond.positive(cond.off_key), pos) and torch.equal(negative.prompt_embeds, neg)
    assert torch.equal(cond.pipeline_kwargs(cond.off_key)["pooled_prompt_embeds"], pooled)
    assert torch.equal(negative.pooled_prompt_embeds, neg_pooled)


def test_weighted_encoding_is_the_plain_one_scaled_with_mean_restored(sd):
    encoder = PromptEncoder(sd)
    plain = encoder.encode("abc de").embeds[0]
    weighted = encoder.encode("(abc:1.5) de").embeds[0]
    w = torch.ones(77)
    w[1:4] = 1.5  # BOS, then a b c
    scaled = plain * w[:, None]
    assert torch.allclose(weighted, scaled * (plain.mean() / scaled.mean()), atol=1e-6)
    assert not torch.allclose(weighted, plain)


def test_chunks_are_encoded_separately_and_concatenated(sd):
    encoder = PromptEncoder(sd)
    long = encoder.encode(words(100)).embeds
    assert long.shape == (1, 154, 32)
    assert torch.allclose(long[:, :77], encoder.encode(words(75)).embeds, atol=1e-6)
    assert torch.allclose(long[:, 77:], encoder.encode(words(25, start=75)).embeds, atol=1e-6)
    broken = encoder.encode("a b BREAK c").embeds
    assert torch.allclose(broken, torch.cat([encoder.encode("a b").embeds, encoder.encode("c").embeds], 1), atol=1e-6)


def test_positive_and_negative_are_padded_to_the_same_chunks_with_the_empty_prompt(sd):
    cond = WeightedConditioning(sd, prompt=PROMPT)
    long_key = (words(100),)
    assert cond.positive(cond.off_key).shape[1] == 77
    padded = cond.positive(long_key)
    assert padded.shape[1] == cond.negative(long_key).prompt_embeds.shape[1] == 154
    assert torch.equal(padded[:, 77:], cond.encoder.empty().embeds)
    assert torch.equal(padded[:, :77], cond.positive(cond.off_key))


def test_a_batch_pads_shorter_texts_by_repeating_their_last_vector(sd):
    cond = WeightedConditioning(sd, prompt=[PROMPT, words(100)], num_images_per_prompt=2)
    positive = cond.positive(cond.off_key)
    assert positive.shape == (4, 154, 32)
    short = cond.encoder.encode(PROMPT).embeds[0]
    assert torch.equal(positive[0, :77], short) and torch.equal(positive[1], positive[0])
    assert torch.equal(positive[0, 77:], short[-1:].expand(77, -1))


# --- generate(): acceptance ---


def test_weight_one_gives_exactly_the_plain_image(sd):
    plain, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="glasses", num_inference_steps=N)
    one, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="(glasses:1.0)", num_inference_steps=N)
    assert torch.equal(one, plain)
    # Also where the prompt's own weights send everything through the weighted encoder.
    weighted = dict(prompt="a (red:1.2) cat", num_inference_steps=N)
    a, _ = latents_of(generate, sd, negative_prompt="glasses", **weighted)
    b, _ = latents_of(generate, sd, negative_prompt="(glasses:1.0)", **weighted)
    assert torch.equal(a, b)
    c, _ = latents_of(generate, sd, prompt="(a red cat:1.0)", negative_prompt="glasses", num_inference_steps=N)
    assert torch.equal(c, plain)


def test_weights_change_the_image(sd):
    plain, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="glasses", num_inference_steps=N)
    up, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="(glasses:1.4)", num_inference_steps=N)
    down, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="[glasses]", num_inference_steps=N)
    assert not torch.equal(up, plain) and not torch.equal(down, plain) and not torch.equal(up, down)


def test_plain_prompts_take_the_stock_path_bit_exactly(sd, monkeypatch):
    import negschedule.long_prompts as long_prompts

    def refuse(*args, **kwargs):
        raise AssertionError("a plain prompt went through the weighted encoder")

    monkeypatch.setattr(long_prompts.WeightedConditioning, "__init__", refuse)
    text = "a red cat: sitting, looking left"
    expected, _ = latents_of(stock, sd, prompt=text, negative_prompt="blue hat, ugly", num_inference_steps=N)
    got, _ = latents_of(generate, sd, prompt=text, negative_prompt="blue hat, ugly", num_inference_steps=N)
    assert torch.equal(got, expected)


def test_a_150_token_negative_is_not_cut(sd):
    glasses, shoes = BASE + ", red glasses", BASE + ", blue shoes"
    assert 140 <= n_tokens(sd, glasses) <= 150
    # The stock pipeline cuts after 77 tokens: the last words do nothing there.
    cut_a, _ = latents_of(stock, sd, prompt=PROMPT, negative_prompt=glasses, num_inference_steps=N)
    cut_b, _ = latents_of(stock, sd, prompt=PROMPT, negative_prompt=shoes, num_inference_steps=N)
    assert torch.equal(cut_a, cut_b)
    a, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt=glasses, num_inference_steps=N)
    b, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt=shoes, num_inference_steps=N)
    assert not torch.equal(a, b)


def test_a_long_negative_starting_late_leaves_the_first_steps_untouched(sd):
    long = BASE + ", red glasses"
    _, reference = latents_of(stock, sd, prompt=PROMPT, num_inference_steps=N)
    shapes = []

    def spy(pipe, i, t, kw):
        shapes.append(kw["prompt_embeds"].shape[1])
        return {}

    _, got = latents_of(generate, sd, prompt=PROMPT, negative_prompt=long, negative_start=2, num_inference_steps=N)
    assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])
    assert not torch.equal(got[2], reference[2])
    generate(sd, prompt=PROMPT, negative_prompt=long, negative_start=2, num_inference_steps=N, output_type="latent",
             callback_on_step_end=spy, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    # The positive is padded only while the long negative is active (the callback sees the next pass's).
    padded = 77 * len(tokenize_chunks(sd, long, sd.tokenizer))
    assert padded > 77 and shapes == [77] + [padded] * (N - 1)


def test_timing_and_weights_together_each_text_encoded_once(sd):
    steps = 10
    with EncoderCalls(sd.text_encoder) as calls:
        timed, timed_steps = latents_of(generate, sd, prompt=PROMPT, negative_prompt="[:(glasses:1.3):0.2]",
                                        num_inference_steps=steps)
    # The prompt, "" (the negative while off), "(glasses:1.3)": one encoder call each.
    assert calls.count == 3
    # [:x:0.2] at 10 steps: "" while step <= 2, so it equals negative_start=3.
    started, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="(glasses:1.3)", negative_start=3,
                            num_inference_steps=steps)
    assert torch.equal(timed, started)
    _, reference = latents_of(stock, sd, prompt=PROMPT, num_inference_steps=steps)
    assert all(torch.equal(timed_steps[s], reference[s]) for s in range(3))
    plain, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="[:glasses:0.2]", num_inference_steps=steps)
    assert not torch.equal(timed, plain)


def test_weighted_prompt_without_negative(sd):
    plain, _ = latents_of(generate, sd, prompt=PROMPT, num_inference_steps=N)
    weighted, _ = latents_of(generate, sd, prompt="a (red:1.4) cat", num_inference_steps=N)
    assert not torch.equal(weighted, plain)
    one, _ = latents_of(generate, sd, prompt="a (red:1.0) cat", num_inference_steps=N)
    assert torch.equal(one, plain)
    no_cfg, _ = latents_of(generate, sd, prompt="a (red:1.4) cat BREAK " + words(80), guidance_scale=1.0,
                           num_inference_steps=N)
    assert no_cfg.shape == plain.shape


def test_cfg_off_with_a_weighted_negative(sd):
    no_cfg, _ = latents_of(stock, sd, prompt=PROMPT, guidance_scale=1.0, num_inference_steps=N)
    off, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="(glasses:1.3)", negative_start=N, cfg_off=True,
                        num_inference_steps=N)
    assert torch.equal(off, no_cfg)
    _, steps = latents_of(generate, sd, prompt=PROMPT, negative_prompt="(glasses:1.3), " + BASE, negative_start=3,
                          cfg_off=True, num_inference_steps=N)
    _, no_cfg_steps = latents_of(stock, sd, prompt=PROMPT, guidance_scale=1.0, num_inference_steps=N)
    assert torch.equal(steps[2], no_cfg_steps[2]) and not torch.equal(steps[3], no_cfg_steps[3])


def test_batches_with_weighted_and_long_prompts(sd):
    out, _ = latents_of(generate, sd, prompt=[PROMPT, "a (green:1.2) dog, " + BASE], num_images_per_prompt=2,
                        negative_prompt=["[:(hat:1.2):2]", BASE], num_inference_steps=N)
    assert out.shape[0] == 4 and torch.isfinite(out).all()


def test_malformed_weight_names_the_argument(sd):
    for argument in ("prompt", "negative_prompt"):
        call = dict(prompt=PROMPT, negative_prompt="glasses", num_inference_steps=N, output_type="latent")
        call[argument] = "(bad:1.2.3)"
        with pytest.raises(InputError) as err:
            generate(sd, **call)
        assert err.value.argument == argument


def test_textual_inversion_tokens_inside_weights():
    pipe = build_tiny_sd(seed=0)  # a fresh one: the embedding changes its tokenizer
    _mean_like_clip(pipe.text_encoder)
    set_scheduler(pipe, "ddim")
    from negschedule.textual_inversion import load_textual_inversion

    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(7))
    path_dir = __import__("tempfile").mkdtemp()
    path = f"{path_dir}/EasyNeg.safetensors"
    from safetensors.torch import save_file

    save_file({"emb_params": vectors}, path)
    tokens = load_textual_inversion(pipe, path, token="EasyNeg")
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    [chunk] = tokenize_chunks(pipe, "a (easyneg:1.2)", pipe.tokenizer)
    assert list(chunk.ids[2:5]) == ids and chunk.weights[2:5] == (1.2,) * 3
    # A multi-vector embedding is not split over two chunks: it moves to the next one whole.
    chunks = tokenize_chunks(pipe, words(73) + " easyneg", pipe.tokenizer, comma_backtrack=0)
    assert [c.length - 2 for c in chunks] == [73, 3] and list(chunks[1].ids[1:4]) == ids
    # Through generate(), in any case, timed, weighted and long.
    a, _ = latents_of(generate, pipe, prompt=PROMPT, negative_prompt="[:(EasyNeg:1.2), " + BASE + ":0.3]",
                      num_inference_steps=N)
    b, _ = latents_of(generate, pipe, prompt=PROMPT, negative_prompt="[:(easyneg:1.2), " + BASE + ":0.3]",
                      num_inference_steps=N)
    c, _ = latents_of(generate, pipe, prompt=PROMPT, negative_prompt="[:(bad:1.2), " + BASE + ":0.3]",
                      num_inference_steps=N)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- SDXL ---


def test_sdxl_pooled_comes_from_the_first_chunk(sdxl):
    first = words(75)
    cond = WeightedConditioning(sdxl, prompt=first + " " + words(30, start=5))
    _, _, pooled, _ = sdxl.encode_prompt(first, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    assert torch.allclose(cond.pipeline_kwargs(cond.off_key)["pooled_prompt_embeds"], pooled, atol=1e-6)
    assert cond.positive(cond.off_key).shape == (1, 154, 64)


def test_sdxl_off_negative_stays_zeros_when_padded(sdxl):
    cond = WeightedConditioning(sdxl, prompt=words(100))
    off = cond.negative(cond.off_key)
    assert off.prompt_embeds.shape == (1, 154, 64)
    assert torch.count_nonzero(off.prompt_embeds) == 0 and torch.count_nonzero(off.pooled_prompt_embeds) == 0


def test_sdxl_weighted_long_and_timed(sdxl):
    long = "(glasses:1.3), " + BASE
    _, reference = latents_of(stock, sdxl, prompt=PROMPT, num_inference_steps=N, **XL)
    _, got = latents_of(generate, sdxl, prompt=PROMPT, negative_prompt=long, negative_start=3,
                        num_inference_steps=N, **XL)
    assert all(torch.equal(got[s], reference[s]) for s in range(3))
    assert not torch.equal(got[3], reference[3])
    plain, _ = latents_of(generate, sdxl, prompt=PROMPT, negative_prompt="glasses", **XL)
    one, _ = latents_of(generate, sdxl, prompt=PROMPT, negative_prompt="(glasses:1.0)", **XL)
    assert torch.equal(plain, one)
    weighted, _ = latents_of(generate, sdxl, prompt="a (red:1.3) cat BREAK sky", negative_prompt="glasses", **XL)
    assert torch.isfinite(weighted).all() and not torch.equal(weighted, plain)
    with_2, _ = latents_of(generate, sdxl, prompt="a (red:1.3) cat", prompt_2=words(90), negative_prompt="glasses",
                           **XL)
    assert torch.isfinite(with_2).all()


# --- the command line passes prompts through generate() ---


def test_cli_takes_weighted_long_and_timed_prompts(tmp_path, capsys):
    from PIL import Image

    from negschedule.cli import main

    negative = "[:(glasses:1.3), " + BASE + ":0.2]"
    out = tmp_path / "weighted.png"
    assert main(["generate", "--prompt", "a (red:1.2) cat BREAK sky", "--negative-prompt", negative,
                 "--steps", "3", "--seed", "1", "--out", str(out)]) == 0
    assert Image.open(out).text["parameters"].splitlines()[1] == f"Negative prompt: {negative}"
    bad = ["generate", "--prompt", "a cat", "--negative-prompt", "(glasses:1.2.3)", "--steps", "3",
           "--out", str(tmp_path / "bad.png")]
    assert main(bad) == 2
    assert "negative_prompt=" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()


def test_clip_skip_works_on_sd(sd):
    # The stock SD encode_prompt fails with clip_skip on transformers 5; the A1111 encoder takes it.
    plain, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="glasses", num_inference_steps=N)
    skipped, _ = latents_of(generate, sd, prompt=PROMPT, negative_prompt="glasses", clip_skip=1,
                            num_inference_steps=N)
    assert torch.isfinite(skipped).all() and not torch.equal(skipped, plain)


def test_ui_takes_weighted_long_and_timed_prompts():
    import numpy as np

    from negschedule.app import DEFAULT_MODEL, MODEL_SCHEDULER, UI, ServeConfig

    pipe = build_tiny_sd(seed=0)  # our own: the UI may swap its scheduler
    ui = UI(ServeConfig(), default_pipe=pipe)
    prompt, negative = "a (red:1.2) cat BREAK sky", "(glasses:1.3), " + BASE
    # The page's core inputs: model, scheduler, prompt, negative, start, end, cfg_off, steps, cfg scale, seed.
    image, _, _ = ui.generate(DEFAULT_MODEL, MODEL_SCHEDULER, prompt, negative, 2, 4, False, 4, 7.5, 1, False)
    expected = generate(pipe, prompt=prompt, negative_prompt=negative, negative_start=2, num_inference_steps=4,
                        guidance_scale=7.5, generator=torch.Generator().manual_seed(1)).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(expected))
