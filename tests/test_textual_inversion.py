"""Textual inversion: file formats, the mixed-case multi-vector fix, width checks, unsafe pickles."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from negschedule.errors import InputError
from negschedule.textual_inversion import load_textual_inversion, multi_vector_tokens, normalize_prompt
from negschedule.tiny import build_tiny_sd, build_tiny_sdxl

WIDTH = 32  # the tiny text encoders' embedding width
EXPANDED = ["easynegativev2", "easynegativev2_1", "easynegativev2_2"]


@pytest.fixture
def pipe():
    return build_tiny_sd(seed=0)  # a fresh one: loading an embedding changes the tokenizer and encoder


@pytest.fixture(scope="module")
def vectors():
    return torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(7))


def save_embedding(folder, vectors, kind: str):
    """Write ``vectors`` the way each tool does."""
    if kind == "kohya.safetensors":
        path = folder / "EasyNegativeV2.safetensors"
        save_file({"emb_params": vectors.contiguous()}, str(path))
    elif kind == "a1111.pt":
        path = folder / "EasyNegativeV2.pt"
        torch.save(
            {
                "string_to_token": {"*": 265},
                "string_to_param": {"*": vectors.clone().requires_grad_()},
                "name": "EasyNegativeV2",
                "step": 1500,
                "sd_checkpoint": "81761151",
                "sd_checkpoint_name": "v1-5-pruned",
            },
            str(path),
        )
    else:  # diffusers' learned_embeds.bin
        path = folder / "learned_embeds.bin"
        torch.save({"<easy>": vectors.clone()}, str(path))
    return path


def encode(pipe, text: str, *, expand: bool = True) -> torch.Tensor:
    """The pipeline's own encode_prompt; ``expand=False`` bypasses its multi-vector rewrite."""
    if not expand:
        pipe.maybe_convert_prompt = lambda prompt, tokenizer: prompt
    try:
        return pipe.encode_prompt(text, "cpu", 1, False)[0]
    finally:
        pipe.__dict__.pop("maybe_convert_prompt", None)


@pytest.mark.parametrize("kind", ["kohya.safetensors", "a1111.pt", "diffusers.bin"])
def test_loads_every_vector_under_the_lower_cased_token(pipe, tmp_path, vectors, kind):
    path = save_embedding(tmp_path, vectors, kind)
    assert load_textual_inversion(pipe, path, "EasyNegativeV2") == EXPANDED
    ids = pipe.tokenizer.convert_tokens_to_ids(EXPANDED)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], vectors)
    assert multi_vector_tokens(pipe) == {"easynegativev2"}


@pytest.mark.parametrize("kind", ["kohya.safetensors", "a1111.pt"])
def test_normalized_prompt_uses_all_vectors(pipe, tmp_path, vectors, kind):
    load_textual_inversion(pipe, save_embedding(tmp_path, vectors, kind), "EasyNegativeV2")
    prompt = "a cat, EasyNegativeV2, blurry"
    normalized = normalize_prompt(pipe, prompt)
    assert normalized == "a cat, easynegativev2, blurry"

    got = encode(pipe, normalized)
    # The reference goes to the text encoder as written: diffusers' maybe_convert_prompt would mangle
    # a hand-written expansion (it substring-replaces "easynegativev2" inside "easynegativev2_1" too).
    by_hand = encode(pipe, "a cat, easynegativev2 easynegativev2_1 easynegativev2_2, blurry", expand=False)
    first_only = encode(pipe, "a cat, easynegativev2, blurry", expand=False)
    assert torch.equal(got, by_hand)
    assert not torch.allclose(got, first_only)
    # Why normalize_prompt exists: the stock pipeline uses only the first vector of a mixed-case token.
    assert torch.equal(encode(pipe, prompt), first_only)


def test_normalize_prompt_rewrites_whole_words_in_any_case(pipe, tmp_path, vectors):
    load_textual_inversion(pipe, save_embedding(tmp_path, vectors, "kohya.safetensors"), "EasyNegativeV2")
    assert normalize_prompt(pipe, "EASYNEGATIVEV2 (easyNegativeV2:1.2)") == "easynegativev2 (easynegativev2:1.2)"
    # A single vector written by hand, and the name inside another word, are not the token.
    unchanged = "EasyNegativeV2_1 xEasyNegativeV2 EasyNegativeV2s"
    assert normalize_prompt(pipe, unchanged) == unchanged


def test_normalize_prompt_is_a_no_op_without_multi_vector_tokens(pipe, tmp_path):
    text = "EasyNegativeV2, a Cat"
    assert normalize_prompt(pipe, text) is text
    single = tmp_path / "single.safetensors"
    save_file({"emb_params": torch.ones(1, WIDTH)}, str(single))
    assert load_textual_inversion(pipe, single, "OneVec") == ["onevec"]
    assert normalize_prompt(pipe, text) is text


def test_wrong_width_names_file_and_widths(pipe, tmp_path):
    path = tmp_path / "sd2-embedding.safetensors"
    save_file({"emb_params": torch.zeros(2, 24)}, str(path))
    vocabulary = len(pipe.tokenizer)
    with pytest.raises(InputError) as err:
        load_textual_inversion(pipe, path, "Neg")
    assert err.value.argument == "path" and err.value.value == str(path)
    assert "24" in err.value.reason and str(WIDTH) in err.value.reason
    assert len(pipe.tokenizer) == vocabulary  # nothing half-registered


def test_malicious_pickle_is_refused_without_running_it(pipe, tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "EasyNegative.pt"
    torch.save({"string_to_param": {"*": Payload()}, "name": "EasyNegative"}, str(path))
    with pytest.raises(InputError) as err:
        load_textual_inversion(pipe, path, "EasyNegative")
    assert err.value.argument == "path" and "refused" in err.value.reason
    assert not marker.exists()
    # The payload is live: an unrestricted unpickling does run it (so the refusal above is what saved us).
    torch.load(str(path), weights_only=False)
    assert marker.exists()


def test_token_already_registered(pipe, tmp_path, vectors):
    path = save_embedding(tmp_path, vectors, "kohya.safetensors")
    load_textual_inversion(pipe, path, "EasyNegativeV2")
    with pytest.raises(InputError) as err:
        load_textual_inversion(pipe, path, "easynegativeV2")
    assert err.value.argument == "token"


@pytest.mark.parametrize(
    "content, words",
    [
        pytest.param(b"not a safetensors file", "not a readable", id="corrupt"),
        pytest.param(None, "cannot tell which tensor", id="several-tensors"),
    ],
)
def test_unreadable_or_ambiguous_files(pipe, tmp_path, content, words):
    path = tmp_path / "weird.safetensors"
    if content is None:
        save_file({"a": torch.zeros(1, WIDTH), "b": torch.zeros(1, WIDTH)}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_textual_inversion(pipe, path, "weird")
    assert err.value.argument == "path" and words in err.value.reason


def test_sdxl_pair_goes_to_both_encoders(tmp_path):
    pipe = build_tiny_sdxl(seed=0)
    clip_l = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(1))
    clip_g = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "negXL.safetensors"
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    assert load_textual_inversion(pipe, path, "NegXL") == ["negxl", "negxl_1"]
    for tokenizer, encoder, expected in [
        (pipe.tokenizer, pipe.text_encoder, clip_l),
        (pipe.tokenizer_2, pipe.text_encoder_2, clip_g),
    ]:
        ids = tokenizer.convert_tokens_to_ids(["negxl", "negxl_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], expected)
    assert normalize_prompt(pipe, "NegXL, blurry") == "negxl, blurry"

    single = tmp_path / "sd15.safetensors"
    save_file({"emb_params": clip_l}, str(single))
    with pytest.raises(InputError) as err:
        load_textual_inversion(pipe, single, "Other")
    assert err.value.argument == "path" and "2 text encoder" in err.value.reason
