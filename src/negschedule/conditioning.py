"""Encode a negative prompt exactly the way the pipeline itself would.

Bit-exactness against the stock pipeline depends on the negative embeddings being computed by the
same call with the same batch: so this module calls the pipeline's own ``encode_prompt`` with the
user's own prompt arguments, and only decides what to pass as ``negative_prompt``. "Off" (``None``)
is what the pipeline uses when it is given no negative prompt: the encoding of "" for SD 1.x/2.x,
zero embeddings (pooled included) for SDXL with ``force_zeros_for_empty_prompt``.

Pipelines of other families (SD3, Flux) are refused (``check_family``): their conditioning lies
where the step callback does not swap it.

A batch row may be off while another is on (a list of prompts, each with its own negative
schedule): SD encodes "" for the off rows, which is what it does for ``negative_prompt=None``;
SDXL with forced zeros zeroes those rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError

# The per-prompt negative texts active at one step; None = off for that prompt.
NegativeKey = tuple  # tuple[str | None, ...]


@dataclass(frozen=True)
class NegativeEmbeds:
    """The negative half of the CFG batch: text embeddings and, for SDXL, the pooled embedding."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None


def is_sdxl(pipe) -> bool:
    """Whether ``pipe`` conditions on pooled text embeddings the SDXL way (``add_text_embeds``)."""
    return getattr(pipe, "text_encoder_2", None) is not None and "add_text_embeds" in getattr(
        pipe, "_callback_tensor_inputs", ()
    )


def check_family(pipe) -> None:
    """Refuse pipelines whose conditioning this project does not know how to swap.

    The timed negative rewrites the embeddings a Stable Diffusion 1.x/2.x or SDXL pipeline (a UNet on
    CLIP text encodings, SDXL's pooled ones in ``add_text_embeds``) hands its step callback. SD3 and
    Flux (a transformer, pooled or T5 embeddings elsewhere) would get a half-swapped negative: refused.
    """
    name = type(pipe).__name__
    if getattr(pipe, "unet", None) is None:
        raise InputError("pipe", name, "negschedule times negatives on Stable Diffusion 1.x/2.x and SDXL pipelines "
                                       "(a UNet on CLIP text encodings)")
    if not hasattr(pipe, "encode_prompt"):  # InstructPix2Pix and older pipelines lay their batch out otherwise
        raise InputError("pipe", name, "has no encode_prompt: its conditioning is not laid out as SD's and SDXL's")
    if getattr(pipe, "text_encoder_2", None) is not None and not is_sdxl(pipe):
        raise InputError("pipe", name, "has a second text encoder but not SDXL's pooled conditioning (add_text_embeds)")


def negative_argument(key: NegativeKey, prompt: Any) -> str | list[str] | None:
    """What to pass as the pipeline's ``negative_prompt`` for ``key`` (per-prompt texts or None)."""
    if all(text is None for text in key):
        return None
    texts = ["" if text is None else text for text in key]
    # The stock pipelines insist that negative_prompt has the type of prompt (str vs list).
    if not isinstance(prompt, list) and len(texts) == 1:
        return texts[0]
    return texts


def second_negative_argument(key: NegativeKey, prompt: Any, negative_prompt_2: str | list[str] | None) -> str | list[str] | None:
    """SDXL's ``negative_prompt_2`` for ``key``: the user's second-encoder negative on the rows whose
    negative is on, "" on the others; None when every row is off (the pipeline's own "no negative")."""
    if negative_prompt_2 is None or all(text is None for text in key):
        return None
    seconds = [negative_prompt_2] * len(key) if isinstance(negative_prompt_2, str) else list(negative_prompt_2)
    texts = ["" if text is None else second for text, second in zip(key, seconds)]
    if not isinstance(prompt, list) and len(texts) == 1:
        return texts[0]
    return texts


class NegativeEncoder:
    """Encodes and caches negatives for one call: each distinct key is encoded once.

    ``encode_kwargs`` are the user's own prompt arguments (``prompt``, ``prompt_2``,
    ``prompt_embeds``, ``pooled_prompt_embeds``, ``clip_skip``, ``num_images_per_prompt``, and
    ``lora_scale``), passed to ``encode_prompt`` unchanged so that the negative is encoded in the
    very batch the pipeline encodes it in.

    ``weighted``: a :class:`~negschedule.long_prompts.WeightedConditioning` for a call whose texts
    need A1111 weights or chunks; then it encodes the negatives instead of ``encode_prompt``.
    """

    def __init__(self, pipe, encode_kwargs: dict[str, Any], weighted=None):
        self.pipe = pipe
        self.weighted = weighted
        self.device: torch.device | None = None  # where the pipeline runs; set by the callback
        # The positive embeddings the pipeline already holds (one row per prompt, pooled for SDXL);
        # set by the callback so that encoding a negative does not encode the positive again.
        self.positive: NegativeEmbeds | None = None
        # SD's encode_prompt takes these positionally, with no defaults.
        self.encode_kwargs = {"prompt": None, "num_images_per_prompt": 1, **encode_kwargs}
        # SDXL's second-encoder negative: on exactly when the negative is (second_negative_argument).
        self.negative_prompt_2 = self.encode_kwargs.pop("negative_prompt_2", None)
        self.num_images_per_prompt = self.encode_kwargs["num_images_per_prompt"]
        self._cache: dict[NegativeKey, NegativeEmbeds] = {}

    def __call__(self, key: NegativeKey) -> NegativeEmbeds:
        if key not in self._cache:
            self._cache[key] = self._encode(key)
        return self._cache[key]

    @property
    def encoded_keys(self) -> list[NegativeKey]:
        """Keys encoded so far, in order (one text-encoder call each)."""
        return list(self._cache)

    def _encode(self, key: NegativeKey) -> NegativeEmbeds:
        if self.weighted is not None:
            return self.weighted.negative(key)
        pipe = self.pipe
        kwargs = dict(self.encode_kwargs)
        prompt = kwargs.get("prompt")
        negative = negative_argument(key, prompt)
        second = second_negative_argument(key, prompt, self.negative_prompt_2)
        if second is not None:
            kwargs["negative_prompt_2"] = second
        if self.positive is not None and "lora_scale" not in kwargs:
            # encode_prompt then skips the positive's text-encoder pass; the negative's pass is
            # unchanged (same tokens, same batch), so its embeddings are the same bits.
            kwargs.update(prompt=None, prompt_embeds=self.positive.prompt_embeds)
            kwargs.pop("prompt_2", None)
            if self.positive.pooled_prompt_embeds is not None:
                kwargs["pooled_prompt_embeds"] = self.positive.pooled_prompt_embeds
        # The pipeline's _execution_device walks every module (about 10 ms): the callback tells us
        # the device instead, from the embeddings it holds.
        device = self.device or getattr(pipe, "_execution_device", None) or pipe.device
        with torch.no_grad():
            if is_sdxl(pipe):
                out = pipe.encode_prompt(
                    device=device,
                    do_classifier_free_guidance=True,
                    negative_prompt=negative,
                    **kwargs,
                )
                _, negative_embeds, _, negative_pooled = out
                zero_rows = self._rows_off(key) if pipe.config.force_zeros_for_empty_prompt else []
                if negative is not None and zero_rows:
                    negative_embeds = negative_embeds.clone()
                    negative_pooled = negative_pooled.clone()
                    negative_embeds[zero_rows] = 0
                    negative_pooled[zero_rows] = 0
                return NegativeEmbeds(negative_embeds, negative_pooled)
            _, negative_embeds = pipe.encode_prompt(
                device=device,
                do_classifier_free_guidance=True,
                negative_prompt=negative,
                **kwargs,
            )
            return NegativeEmbeds(negative_embeds)

    def _rows_off(self, key: NegativeKey) -> list[int]:
        """Rows of the repeated batch (prompt-major, ``num_images_per_prompt`` each) whose negative is off."""
        n = self.num_images_per_prompt
        return [b * n + j for b, text in enumerate(key) if text is None for j in range(n)]
