"""Encode prompts the way AUTOMATIC1111 does: emphasis weights, 75-token chunks, ``BREAK``.

This module owns turning prompt *texts* (one step's text, after ``schedule.py``) into the
embeddings a stock SD / SDXL pipeline takes as ``prompt_embeds`` / ``negative_prompt_embeds``
(and the pooled ones for SDXL), the A1111 way, on the pipeline's own tokenizers and text encoders:

* A text is parsed into weighted spans (``emphasis.py``); each span is tokenized on its own, its
  textual-inversion tokens expanded by the pipeline's ``maybe_convert_prompt``.
* Tokens fill chunks of ``model_max_length - 2`` (75 for CLIP); ``BREAK`` starts a new chunk; a
  multi-vector textual-inversion embedding never straddles two chunks. When a chunk fills up in
  mid-phrase and a comma lies at most ``COMMA_BACKTRACK`` (20, A1111's default) tokens back, the
  words after that comma move to the next chunk (A1111's "comma padding backtrack").
* Each chunk is wrapped in BOS / EOS, padded to 77 with the tokenizer's pad token (EOS for SD 1.x,
  ``!`` for SD 2.x / OpenCLIP, as the pipeline's tokenizer pads) and encoded on its own; the
  chunks are concatenated along the token axis.
* Weights: A1111's default "Original" emphasis. The encoder's output for a chunk is multiplied
  token by token by the weights, then rescaled so its mean equals the unweighted mean. A1111
  takes that mean over all the texts it encodes in one batch; here it is taken per text and
  chunk, which is what A1111 gives for a text encoded alone. A chunk whose weights are all 1 is
  left untouched, so ``(glasses:1.0)`` encodes exactly like ``glasses``.
* SDXL: both encoders chunk the same way (``prompt_2`` for the second one where given); the hidden
  states are concatenated as the pipeline does, and the pooled embedding is the second encoder's
  for the *first* chunk (A1111's choice). ``clip_skip`` selects the layer as the pipeline does,
  but for negatives too (A1111 applies CLIP skip to both; diffusers ignores it for negatives).
* Lengths: within a batch, shorter texts are padded by repeating their last vector (A1111's
  ``reconstruct_cond_batch``); the positive and the negative of a step are then padded to the same
  number of chunks with the encoding of the empty prompt (A1111's "pad prompt/negative prompt to
  be same length" option; without it A1111 runs the two halves of CFG separately, which a stock
  pipeline's single batch cannot). A negative that is off for SDXL with
  ``force_zeros_for_empty_prompt`` stays zeros, padding included.

Why by hand: see ``emphasis.py``; compel weights by blending toward the empty prompt, not by
scaling with mean restore, and it knows neither ``BREAK`` nor A1111's syntax or chunk rules.

Texts that need none of this (no weight but 1, no ``BREAK``, at most 75 tokens) never come here:
``generate()`` hands them to the stock pipeline as plain text, so they stay bit-exact with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .callbacks import NegativeScheduleCallback
from .conditioning import NegativeEmbeds, NegativeEncoder, NegativeKey, is_sdxl
from .emphasis import has_weights, is_break, parse_prompt_attention, plain_text
from .errors import InputError

__all__ = [
    "COMMA_BACKTRACK",
    "TokenChunk",
    "needs_a1111_encoding",
    "tokenize_chunks",
    "apply_emphasis",
    "PromptEncoder",
    "WeightedConditioning",
    "WeightedNegativeScheduleCallback",
]

COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack"; 0 turns the back-off off


@dataclass(frozen=True)
class TokenChunk:
    """One 77-token window: ids with BOS/EOS/padding, a weight per id, and how many ids are real."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    length: int  # BOS + content + EOS: the attention mask's ones


def _tokenizers(pipe) -> list:
    return [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]


def _expand_ti(pipe, text: str, tokenizer) -> str:
    convert = getattr(pipe, "maybe_convert_prompt", None)
    # Only multi-vector tokens expand; skipping the call otherwise also spares its too-long warning.
    if convert is None or not _vector_runs(tokenizer):
        return text
    return convert(text, tokenizer)


def _token_ids(pipe, text: str, tokenizer) -> list[int]:
    if not text:
        return []
    # verbose=False: a text longer than 77 tokens is the point here, not a mistake to warn about.
    ids = tokenizer(_expand_ti(pipe, text, tokenizer), add_special_tokens=False, truncation=False, verbose=False)
    return list(ids.input_ids)


def needs_a1111_encoding(pipe, text: str, argument: str = "prompt") -> bool:
    """Whether ``text`` has a weight other than 1, a ``BREAK``, or more tokens than one chunk holds."""
    parse_prompt_attention(text, argument)  # a weight A1111 cannot read is refused naming the argument
    if has_weights(text):
        return True
    plain = plain_text(text)
    return any(len(_token_ids(pipe, plain, tok)) > tok.model_max_length - 2 for tok in _tokenizers(pipe))


def _vector_runs(tokenizer) -> dict[int, list[int]]:
    """For each multi-vector textual-inversion token id, the ids it expands to (``t, t_1, ...``)."""
    added = tokenizer.added_tokens_encoder
    runs = {}
    for token, token_id in added.items():
        ids = [token_id]
        while f"{token}_{len(ids)}" in added:
            ids.append(added[f"{token}_{len(ids)}"])
        if len(ids) > 1:
            runs[token_id] = ids
    return runs


def tokenize_chunks(pipe, text: str, tokenizer, comma_backtrack: int = COMMA_BACKTRACK) -> list[TokenChunk]:
    """Split ``text`` into A1111's chunks for ``tokenizer`` (at least one; ``BREAK`` starts a new one)."""
    size = tokenizer.model_max_length - 2
    comma = tokenizer.get_vocab().get(",</w>")
    vectors = _vector_runs(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    chunks: list[TokenChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        filler = size - len(ids)
        chunks.append(
            TokenChunk(
                ids=tuple([bos, *ids, eos] + [pad] * filler),
                weights=tuple([1.0, *weights, 1.0] + [1.0] * filler),
                length=len(ids) + 2,
            )
        )
        ids, weights, last_comma = [], [], -1

    for span in parse_prompt_attention(text):
        if is_break(span):
            close()
            continue
        tokens = _token_ids(pipe, span.text, tokenizer)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(ids)
            elif comma_backtrack and len(ids) == size and last_comma != -1 and len(ids) - last_comma <= comma_backtrack:
                # Full in mid-phrase: carry the words after the last comma over to the next chunk.
                moved_ids, moved_weights = ids[last_comma + 1 :], weights[last_comma + 1 :]
                ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == size:
                close()
            expansion = vectors.get(token)
            run = len(expansion) if expansion else 1
            if run > 1 and tokens[position : position + run] == expansion:
                # A multi-vector embedding stays in one chunk.
                if len(ids) + run > size:
                    close()
                ids += tokens[position : position + run]
                weights += [span.weight] * run
                position += run
                continue
            ids.append(token)
            weights.append(span.weight)
            position += 1
    if ids or not chunks:
        close()
    return chunks


def apply_emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis on one chunk: scale token by token, then restore the mean.

    ``z`` is ``(..., tokens, width)``, ``weights`` ``(..., tokens)``. All-ones weights return ``z``.
    Where the weighted mean is 0 the ratio does not exist (A1111 would produce NaN): the scaled
    embeddings are returned as they are, as A1111's "No norm" emphasis would.
    """
    if bool((weights == 1).all()):
        return z
    original_mean = z.mean()
    z = z * weights.to(z)[..., None]
    ratio = original_mean / z.mean()
    return z * ratio if bool(torch.isfinite(ratio)) else z


@dataclass(frozen=True)
class TextEmbedding:
    """One text encoded A1111's way: ``(1, chunks * 77, width)`` and, for SDXL, pooled ``(1, dim)``."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None


class PromptEncoder:
    """Encodes texts A1111's way on a pipeline's text encoder(s); each distinct text once.

    ``clip_skip`` and ``lora_scale`` mean what they mean to the pipeline's ``encode_prompt``.
    """

    def __init__(self, pipe, clip_skip: int | None = None, lora_scale: float | None = None,
                 comma_backtrack: int = COMMA_BACKTRACK):
        self.pipe = pipe
        self.clip_skip = clip_skip
        self.lora_scale = lora_scale
        self.comma_backtrack = comma_backtrack
        self.sdxl = is_sdxl(pipe)
        pairs = [(getattr(pipe, f"tokenizer{s}", None), getattr(pipe, f"text_encoder{s}", None)) for s in ("", "_2")]
        self.encoders = [(t, e) for t, e in pairs if t is not None and e is not None]
        self._cache: dict[tuple[str, str | None], TextEmbedding] = {}

    @property
    def encoded_texts(self) -> list[tuple[str, str | None]]:
        """``(text, text_2)`` pairs encoded so far, in order."""
        return list(self._cache)

    def encode(self, text: str, text_2: str | None = None) -> TextEmbedding:
        """``text`` on every encoder (``text_2`` on SDXL's second one, where given)."""
        key = (text, None if text_2 == text else text_2)
        if key not in self._cache:
            self._cache[key] = self._encode(*key)
        return self._cache[key]

    def empty(self) -> TextEmbedding:
        """The empty prompt: what shorter embeddings are padded with, chunk by chunk."""
        return self.encode("")

    def _encode(self, text: str, text_2: str | None) -> TextEmbedding:
        hidden, pooled = [], None
        for index, (tokenizer, text_encoder) in enumerate(self.encoders):
            chunks = tokenize_chunks(self.pipe, text_2 if index == 1 and text_2 is not None else text, tokenizer,
                                     self.comma_backtrack)
            z, p = self._run(text_encoder, chunks)
            hidden.append(z)
            if p is not None and pooled is None:
                pooled = p[:1]  # the first chunk's, as A1111
        # The encoders may chunk text and text_2 differently: pad with the empty prompt's chunks.
        n = max(h.shape[0] for h in hidden)
        if any(h.shape[0] != n for h in hidden):
            hidden = [torch.cat([h] + [self._empty_chunk(i)] * (n - h.shape[0])) for i, h in enumerate(hidden)]
        embeds = torch.cat(hidden, dim=-1).reshape(1, -1, sum(h.shape[-1] for h in hidden))
        dtype = self.encoders[-1][1].dtype
        return TextEmbedding(embeds.to(dtype), None if pooled is None else pooled.to(dtype))

    def _empty_chunk(self, index: int) -> torch.Tensor:
        tokenizer, text_encoder = self.encoders[index]
        z, _ = self._run(text_encoder, tokenize_chunks(self.pipe, "", tokenizer))
        return z

    def _run(self, text_encoder, chunks: Sequence[TokenChunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode the chunks in one batch; returns hidden states ``(chunks, 77, width)`` and pooled or None."""
        device = text_encoder.device
        ids = torch.tensor([c.ids for c in chunks], device=device)
        weights = torch.tensor([c.weights for c in chunks], device=device)
        scaled = self._scale_lora(text_encoder)
        try:
            with torch.no_grad():
                if self.sdxl:
                    # As StableDiffusionXLPipeline.encode_prompt: no attention mask, penultimate layer by default.
                    out = text_encoder(ids, output_hidden_states=True)
                    pooled = out[0] if out[0].ndim == 2 else None
                    z = out.hidden_states[-2 if self.clip_skip is None else -(self.clip_skip + 2)]
                else:
                    pooled = None
                    mask = None
                    if getattr(text_encoder.config, "use_attention_mask", False):
                        mask = torch.tensor([[1] * c.length + [0] * (len(c.ids) - c.length) for c in chunks],
                                            device=device)
                    if self.clip_skip is None:
                        z = text_encoder(ids, attention_mask=mask)[0]
                    else:
                        out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
                        # transformers 5 flattened CLIPTextModel (no .text_model), where diffusers still looks.
                        final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
                        z = final_norm(out.hidden_states[-(self.clip_skip + 1)])
        finally:
            if scaled:
                from diffusers.utils import unscale_lora_layers

                unscale_lora_layers(text_encoder, self.lora_scale)
        z = torch.stack([apply_emphasis(z[i], weights[i]) for i in range(len(chunks))])
        return z, pooled

    def _scale_lora(self, text_encoder) -> bool:
        from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers

        if self.lora_scale is None or not USE_PEFT_BACKEND:
            return False
        scale_lora_layers(text_encoder, self.lora_scale)
        return True


def _pad_batch(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``(1, L_i, D)`` rows, padding shorter ones by repeating their last vector (A1111)."""
    longest = max(r.shape[1] for r in rows)
    return torch.cat([torch.cat([r, r[:, -1:].expand(1, longest - r.shape[1], r.shape[2])], dim=1) for r in rows])


class WeightedConditioning:
    """The conditioning of one pipeline call encoded A1111's way: the positive, and any negative key.

    ``prompt`` (str or list) and ``prompt_2`` are texts (TI-normalized); or give ``prompt_embeds``
    (and ``pooled_prompt_embeds`` for SDXL), which are used as they are. Negative keys are tuples of
    per-prompt texts, None for "off" (see ``conditioning.py``). Every tensor handed out has the
    pipeline's batch ``prompts * num_images_per_prompt`` except :meth:`pipeline_kwargs`'s, which
    the pipeline repeats itself.
    """

    def __init__(self, pipe, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None,
                 prompt_embeds: torch.Tensor | None = None, pooled_prompt_embeds: torch.Tensor | None = None,
                 num_images_per_prompt: int = 1, clip_skip: int | None = None, lora_scale: float | None = None):
        self.pipe = pipe
        self.encoder = PromptEncoder(pipe, clip_skip=clip_skip, lora_scale=lora_scale)
        self.sdxl = self.encoder.sdxl
        self.force_zeros = self.sdxl and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        self.num_images_per_prompt = num_images_per_prompt
        self.chunk_tokens = self.encoder.encoders[0][0].model_max_length
        if prompt_embeds is not None:
            if self.sdxl and pooled_prompt_embeds is None:
                raise InputError("pooled_prompt_embeds", None, "is needed with prompt_embeds on SDXL")
            self._positive, self._positive_pooled = prompt_embeds, pooled_prompt_embeds
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            seconds = [None] * len(prompts) if prompt_2 is None else (
                [prompt_2] * len(prompts) if isinstance(prompt_2, str) else list(prompt_2))
            encoded = [self.encoder.encode(p, p2) for p, p2 in zip(prompts, seconds)]
            self._positive = _pad_batch([e.embeds for e in encoded])
            self._positive_pooled = torch.cat([e.pooled for e in encoded]) if self.sdxl else None
        self._negatives: dict[NegativeKey, tuple[torch.Tensor, torch.Tensor | None, list[bool]]] = {}

    @property
    def off_key(self) -> NegativeKey:
        """The negative key with every prompt's negative off."""
        return (None,) * self._positive.shape[0]

    @property
    def encoded_texts(self) -> list[tuple[str, str | None]]:
        """The distinct texts encoded so far (each once), the empty prompt included where it was needed."""
        return self.encoder.encoded_texts

    def _chunks(self, embeds: torch.Tensor) -> int:
        return embeds.shape[1] // self.chunk_tokens

    def _negative_rows(self, key: NegativeKey):
        if key not in self._negatives:
            zero = [text is None and self.force_zeros for text in key]
            encoded = [None if z else self.encoder.encode("" if text is None else text) for text, z in zip(key, zero)]
            width, dtype = self._positive.shape[-1], self._positive.dtype
            rows = [torch.zeros(1, self.chunk_tokens, width, dtype=dtype, device=self._positive.device)
                    if e is None else e.embeds for e in encoded]
            pooled = None
            if self.sdxl:
                pooled = torch.cat([torch.zeros_like(self._positive_pooled[:1]) if e is None else e.pooled
                                    for e in encoded])
            self._negatives[key] = (_pad_batch(rows), pooled, zero)
        return self._negatives[key]

    def _pad(self, embeds: torch.Tensor, chunks: int, zero_rows: Sequence[bool] = ()) -> torch.Tensor:
        """Append empty-prompt chunks (zeros for forced-zero rows) up to ``chunks``."""
        missing = chunks - self._chunks(embeds)
        if missing <= 0:
            return embeds
        if embeds.shape[1] % self.chunk_tokens:
            raise InputError("prompt_embeds", tuple(embeds.shape),
                             f"cannot be padded to a long negative: length is not a multiple of {self.chunk_tokens}")
        empty = self.encoder.empty().embeds.to(embeds)
        filler = torch.cat([empty] * missing, dim=1).expand(embeds.shape[0], -1, -1).clone()
        for row, zero in enumerate(zero_rows):
            if zero:
                filler[row] = 0
        return torch.cat([embeds, filler], dim=1)

    def _chunks_for(self, key: NegativeKey) -> int:
        return max(self._chunks(self._positive), self._chunks(self._negative_rows(key)[0]))

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.num_images_per_prompt, dim=0)

    def positive(self, key: NegativeKey, repeat: bool = True) -> torch.Tensor:
        """The positive embeddings, padded to the length the negative ``key`` needs."""
        out = self._pad(self._positive, self._chunks_for(key))
        return self._repeat(out) if repeat else out

    def negative(self, key: NegativeKey, repeat: bool = True) -> NegativeEmbeds:
        """The negative for ``key``, padded to the positive's length (or the positive to its)."""
        rows, pooled, zero = self._negative_rows(key)
        embeds = self._pad(rows, self._chunks_for(key), zero)
        if repeat:
            return NegativeEmbeds(self._repeat(embeds), None if pooled is None else self._repeat(pooled))
        return NegativeEmbeds(embeds, pooled)

    def pipeline_kwargs(self, key: NegativeKey, cfg: bool = True) -> dict[str, Any]:
        """``prompt_embeds`` (and the negative, pooled ones) to start a pipeline call with ``key`` active."""
        kwargs: dict[str, Any] = {"prompt_embeds": self.positive(key, repeat=False)}
        if self.sdxl:
            kwargs["pooled_prompt_embeds"] = self._positive_pooled
        if cfg:
            negative = self.negative(key, repeat=False)
            kwargs["negative_prompt_embeds"] = negative.prompt_embeds
            if self.sdxl:
                kwargs["negative_pooled_prompt_embeds"] = negative.pooled_prompt_embeds
        return kwargs


class WeightedNegativeScheduleCallback(NegativeScheduleCallback):
    """:class:`NegativeScheduleCallback` whose embeddings come from a :class:`WeightedConditioning`.

    Positive and negative are padded to the same number of chunks per step (a long negative only
    lengthens the positive while it is active), so the steps before a long negative starts equal
    the run without a negative.
    """

    def __init__(self, step_keys: Sequence[NegativeKey], conditioning: WeightedConditioning,
                 guidance_scale: float, cfg_off: bool = False, guidance_scale_with_negative: float | None = None):
        super().__init__(step_keys, {}, guidance_scale, cfg_off=cfg_off, guidance_scale_with_negative=guidance_scale_with_negative)
        self.conditioning = conditioning

    def bind(self, pipe) -> "WeightedNegativeScheduleCallback":
        super().bind(pipe)
        self._encoder = NegativeEncoder(pipe, self.encode_kwargs, weighted=self.conditioning)
        return self

    def pipeline_kwargs(self, *args, **kwargs) -> dict[str, Any]:
        out = super().pipeline_kwargs(*args, **kwargs)
        out.pop("negative_prompt", None)
        first = self.step_keys[0]
        out.update(self.conditioning.pipeline_kwargs(first, cfg=self._cfg_on(first)))
        return out

    def _switch(self, pipeline, old: NegativeKey, new: NegativeKey, kw: dict[str, Any]) -> None:
        # The parent keeps the blocks after the negative from kw: hand it the positive padded for the new negative.
        positive = self.conditioning.positive(new).to(kw["prompt_embeds"])
        blocks = self.blocks(pipeline, old)
        frames = kw["prompt_embeds"].shape[0] // blocks // positive.shape[0]  # AnimateDiff: a row per frame
        kw["prompt_embeds"] = torch.cat([positive.repeat_interleave(frames, dim=0)] * blocks)
        super()._switch(pipeline, old, new, kw)
