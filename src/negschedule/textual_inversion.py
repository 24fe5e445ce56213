"""Textual inversion embeddings (EasyNegative and the like): loading the files users have, safely.

Owns reading embedding files (``.safetensors`` as kohya/A1111 save them, single-tensor or SDXL's
``clip_l``/``clip_g`` pair; A1111 ``.pt``/``.bin`` pickles, read with ``weights_only=True`` so no
code in them runs), checking them against the pipeline's text encoders, and registering them with
diffusers' own ``pipe.load_textual_inversion``. It also owns the fix for a diffusers pitfall:
CLIP's tokenizer lower-cases the prompt, so ``maybe_convert_prompt`` never expands a mixed-case
multi-vector token (``EasyNegativeV2`` -> ``EasyNegativeV2 EasyNegativeV2_1 ...``) and only the
first vector reaches the model. Tokens are therefore registered lower-cased, and
:func:`normalize_prompt` rewrites a prompt's occurrences of them, in any case, to that form.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from .errors import InputError

SUFFIXES = (".safetensors", ".pt", ".bin")

# SDXL embeddings hold one tensor per text encoder, under these names (A1111 and kohya agree).
SDXL_KEYS = ("clip_l", "clip_g")


def load_textual_inversion(pipe, path: str | os.PathLike, token: str) -> list[str]:
    """Register the embedding in ``path`` under ``token`` (lower-cased); return the tokens added.

    A multi-vector embedding adds ``token, token_1, ...``; write ``token`` (any case) in a prompt
    and pass the prompt through :func:`normalize_prompt` to use all of its vectors.
    """
    path = Path(path)
    if not isinstance(token, str) or not token or any(ch.isspace() for ch in token):
        raise InputError("token", token, "must be one word without spaces")
    registered = token.lower()

    tensors = _read_embedding(path)
    encoders = _text_encoders(pipe)
    if len(tensors) != len(encoders):
        kind = "an SDXL (clip_l + clip_g)" if len(tensors) == 2 else "a single-encoder (SD 1.x/2.x)"
        raise InputError(
            "path", str(path), f"{kind} embedding does not fit a pipeline with {len(encoders)} text encoder(s)"
        )

    checked = []
    for tensor, (tokenizer, text_encoder) in zip(tensors, encoders):
        tensor = tensor.detach()
        if tensor.ndim == 1:
            tensor = tensor[None]
        if tensor.ndim != 2 or tensor.shape[0] == 0:
            reason = f"embedding has shape {tuple(tensor.shape)}; expected (vectors, width)"
            raise InputError("path", str(path), reason)
        expected = text_encoder.get_input_embeddings().weight.shape[-1]
        if tensor.shape[-1] != expected:
            reason = f"embedding width {tensor.shape[-1]} does not match the text encoder's width {expected}"
            raise InputError("path", str(path), reason)
        checked.append(tensor)
        vocab = tokenizer.get_vocab()
        if registered in vocab or f"{registered}_1" in vocab:
            reason = f"{registered!r} is already in the tokenizer's vocabulary; choose another token"
            raise InputError("token", token, reason)
    counts = [tensor.shape[0] for tensor in checked]
    if len(set(counts)) != 1:
        raise InputError("path", str(path), f"clip_l and clip_g hold different numbers of vectors: {counts}")

    for tensor, (tokenizer, text_encoder) in zip(checked, encoders):
        # diffusers does the tokenizer/embedding-matrix bookkeeping; we only hand it a checked tensor.
        pipe.load_textual_inversion(tensor, token=registered, tokenizer=tokenizer, text_encoder=text_encoder)
    return [registered] + [f"{registered}_{i}" for i in range(1, counts[0])]


def multi_vector_tokens(pipe) -> set[str]:
    """The registered tokens that stand for more than one vector (``t`` such that ``t_1`` is registered too).

    Derived from the tokenizers' added tokens, so it also sees tokens registered by other code.
    """
    tokens: set[str] = set()
    for tokenizer, _ in _text_encoders(pipe):
        added = tokenizer.added_tokens_encoder
        tokens.update(t for t in added if f"{t}_1" in added)
    return tokens


def normalize_prompt(pipe, text: str) -> str:
    """Rewrite whole-word occurrences of multi-vector tokens, in any case, to their registered form.

    Then the pipeline's own ``maybe_convert_prompt`` expands them to all their vectors. With no
    multi-vector token registered, ``text`` itself is returned.
    """
    by_lower = {t.lower(): t for t in multi_vector_tokens(pipe)}
    if not by_lower:
        return text
    # Longest first, so a token that is a prefix of another never wins the alternation.
    alternatives = "|".join(re.escape(t) for t in sorted(by_lower, key=len, reverse=True))
    # \w on both sides: "EasyNegativeV2_1" (a single vector written by hand) and "xEasyNegativeV2" stay as they are.
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
    return pattern.sub(lambda match: by_lower[match.group(0).lower()], text)


def _text_encoders(pipe) -> list[tuple]:
    """(tokenizer, text_encoder) pairs of the pipeline, first encoder first."""
    pairs = []
    for suffix in ("", "_2"):
        tokenizer = getattr(pipe, f"tokenizer{suffix}", None)
        text_encoder = getattr(pipe, f"text_encoder{suffix}", None)
        if tokenizer is not None and text_encoder is not None:
            pairs.append((tokenizer, text_encoder))
    if not pairs:
        raise InputError("pipe", type(pipe).__name__, "has no tokenizer and text encoder to add an embedding to")
    return pairs


def _read_embedding(path: Path) -> list[torch.Tensor]:
    """One tensor (single encoder) or two (SDXL clip_l, clip_g) from an embedding file."""
    if not path.is_file():
        raise InputError("path", str(path), "no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError("path", str(path), f"unknown embedding format; expected {', '.join(SUFFIXES)}")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:
            raise InputError("path", str(path), f"not a readable .safetensors file: {exc}") from exc
    else:
        try:
            # weights_only: an A1111 .pt is a pickle; only tensors, containers and numbers may come out of it.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InputError(
                "path", str(path), "refused: it pickles objects other than tensors, and loading it could run code"
            ) from exc
        except Exception as exc:
            raise InputError("path", str(path), f"not a readable torch file: {exc}") from exc
    return _tensors_from_state(state, path)


def _tensors_from_state(state, path: Path) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if not isinstance(state, dict):
        raise InputError("path", str(path), f"holds a {type(state).__name__}, not an embedding")
    if all(key in state for key in SDXL_KEYS):
        tensors = [state[key] for key in SDXL_KEYS]
    elif "string_to_param" in state:  # A1111: {"string_to_param": {"*": tensor}, "name": ..., "step": ...}
        params = state["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise InputError("path", str(path), "string_to_param holds no tensor")
        tensors = [params["*"] if "*" in params else next(iter(params.values()))]
        if len(params) > 1 and "*" not in params:
            raise InputError("path", str(path), f"string_to_param holds several tensors: {sorted(params)}")
    elif "emb_params" in state:  # kohya
        tensors = [state["emb_params"]]
    elif len(state) == 1:  # diffusers' {token: tensor} and other single-tensor files
        tensors = [next(iter(state.values()))]
    else:
        raise InputError(
            "path", str(path), f"cannot tell which tensor is the embedding among keys {sorted(map(str, state))[:8]}"
        )
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            raise InputError("path", str(path), f"holds a {type(tensor).__name__} where an embedding tensor belongs")
    return tensors
