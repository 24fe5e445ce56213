"""A drop-in ``PipelineCallback`` that times the negative prompt on a stock SD / SDXL pipeline.

The stock pipelines concatenate ``[negative; positive]`` embeddings once, before their loop
(``[negative; positive; positive]`` with perturbed-attention guidance), and hand them to
``callback_on_step_end`` after every loop pass. The callback swaps the negative block (and SDXL's
pooled negative in ``add_text_embeds``) whenever the next pass belongs to a step whose active
negative text differs. A callback runs *after* pass ``i``, so the state for pass 0 must be
set up front: :meth:`NegativeScheduleCallback.pipeline_kwargs` gives the ``negative_prompt`` (and,
in ``cfg_off`` mode, the ``guidance_scale``) to start the call with.

In ``cfg_off`` mode the steps whose negative is off run without CFG at all (one model evaluation,
positive prediction only, like A1111's "Skip Early CFG"): the callback flips the pipeline's
``_guidance_scale`` between 1 (CFG off) and the user's scale, as diffusers' own
``SDCFGCutoffCallback`` does, and grows or shrinks the embedding batch to match. With
``guidance_scale_with_negative`` it sets the pipeline's scale the same way at the steps where a
negative acts (the stock loops read ``self.guidance_scale`` at every pass).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch
from diffusers.callbacks import PipelineCallback

from .conditioning import NegativeEmbeds, NegativeEncoder, NegativeKey, check_family, is_sdxl
from .errors import InputError
from .passes import step_of_passes


def step_scale(key: NegativeKey, guidance_scale: float, guidance_scale_with_negative: float | None = None,
               cfg_off: bool = False) -> float | None:
    """CFG's scale at a step whose negative texts are ``key``: None where CFG is off there (``cfg_off``
    and no negative), ``guidance_scale_with_negative`` where a negative acts (when set), else
    ``guidance_scale``. The one rule the stock path's callback, the engine's step keys and
    ``generate()``'s mid-run check share, so that they cannot disagree."""
    off = all(text is None for text in key)
    if off and cfg_off:
        return None
    if guidance_scale_with_negative is not None and not off:
        return guidance_scale_with_negative
    return guidance_scale


def reads_scale_every_pass(pipe) -> bool:
    """Whether ``pipe``'s loop reads its guidance scale from the pipeline at every pass (``self.guidance_scale``),
    so that a callback can change it mid-run. A few stock loops (the ControlNet img2img and inpainting
    ones, ControlNet-Union SDXL) combine CFG with the ``guidance_scale`` argument's local copy instead:
    on those the scale cannot change where the negative starts."""
    return _loop_reads_scale(pipe if isinstance(pipe, type) else type(pipe))


@functools.lru_cache(maxsize=None)
def _loop_reads_scale(cls: type) -> bool:
    # Cached per class: reading the source costs ~3 ms, about 1% of a toy-model generation.
    import inspect
    import re

    try:
        source = inspect.getsource(cls.__call__)
    except (OSError, TypeError):  # no source to read (a compiled or dynamic class): trust the stock layout
        return True
    return re.search(r"(?<![.\w])guidance_scale\s*\*\s*\(", source) is None


class NegativeScheduleCallback(PipelineCallback):
    """Swap the negative conditioning per step, following ``step_keys`` (one key per step).

    ``step_keys[s]`` is the tuple of per-prompt negative texts active at step ``s`` (None = off).
    Build it with :func:`negschedule.generate.plan_negatives`, or let :func:`negschedule.generate`
    do everything.
    """

    def __init__(
        self,
        step_keys: Sequence[NegativeKey],
        encode_kwargs: dict[str, Any],
        guidance_scale: float,
        cfg_off: bool = False,
        guidance_scale_with_negative: float | None = None,
    ):
        super().__init__(cutoff_step_ratio=1.0)
        if not step_keys:
            raise InputError("num_inference_steps", 0, "must be at least 1")
        self.step_keys = [tuple(k) for k in step_keys]
        self.encode_kwargs = dict(encode_kwargs)
        self.guidance_scale = float(guidance_scale)
        # The CFG scale at the steps where a negative acts (None: guidance_scale there too).
        self.guidance_scale_with_negative = None if guidance_scale_with_negative is None else float(guidance_scale_with_negative)
        self.cfg_off = cfg_off
        self._encoder: NegativeEncoder | None = None
        # SDXL needs its pooled tensors too, but SD refuses to hand them over: bind(pipe) decides.
        self._tensor_inputs = ["prompt_embeds"]
        self._pass_steps: list[int] | None = None
        self._active: NegativeKey = self.step_keys[0]
        # Model evaluations per latent, counted per pass (2 with CFG, 1 without): for reports.
        self.model_evaluations = 0

    @classmethod
    def for_call(
        cls,
        prompt: str | list[str],
        negative_prompt: str | list[str],
        num_inference_steps: int,
        guidance_scale: float,
        negative_start: int | float | None = None,
        negative_end: int | float | None = None,
        num_images_per_prompt: int = 1,
        cfg_off: bool = False,
        guidance_scale_with_negative: float | None = None,
    ) -> "NegativeScheduleCallback":
        """Plan a callback for one pipeline call; pass ``**cb.pipeline_kwargs()`` to that call.

        ``pipe(prompt=p, num_inference_steps=30, **cb.pipeline_kwargs(pipe))`` then runs the timed negative.
        """
        from .generate import batch_size, check_scale_with_negative, plan_negatives, require_cfg

        require_cfg(guidance_scale)
        guidance_scale_with_negative = check_scale_with_negative(guidance_scale_with_negative)
        keys = plan_negatives(
            negative_prompt, num_inference_steps, batch_size(prompt, None), negative_start, negative_end
        )
        encode = {"prompt": prompt, "num_images_per_prompt": num_images_per_prompt}
        return cls(keys, encode, guidance_scale, cfg_off=cfg_off, guidance_scale_with_negative=guidance_scale_with_negative)

    @property
    def tensor_inputs(self) -> list[str]:
        return self._tensor_inputs

    def _off(self, key: NegativeKey) -> bool:
        return all(text is None for text in key)

    def _cfg_on(self, key: NegativeKey) -> bool:
        return not (self.cfg_off and self._off(key))

    def scale(self, key: NegativeKey) -> float:
        """The pipeline's guidance scale while ``key`` is active (1 where CFG is off: no CFG to scale)."""
        scale = step_scale(key, self.guidance_scale, self.guidance_scale_with_negative, self.cfg_off)
        return 1.0 if scale is None else scale

    def pipeline_kwargs(self, pipe=None) -> dict[str, Any]:
        """Arguments the pipeline call must start with so that pass 0 runs step 0's state.

        Give ``pipe`` to bind the callback to it first (needed for SDXL's pooled embeddings).
        """
        from .conditioning import negative_argument, second_negative_argument

        if pipe is not None:
            self.bind(pipe)
        first = self.step_keys[0]
        out = {
            "negative_prompt": negative_argument(first, self.encode_kwargs.get("prompt")),
            "guidance_scale": self.scale(first),
            "callback_on_step_end": self,
        }
        second = second_negative_argument(first, self.encode_kwargs.get("prompt"), self.encode_kwargs.get("negative_prompt_2"))
        if second is not None:
            out["negative_prompt_2"] = second
        if self._mixed_sdxl_start(first):
            # Given negative_prompt=[NEG, ""], SDXL encodes "" for the rows whose negative is off, where
            # every later step of this run (and the engine) gives them zeros, the pipeline's own "no
            # negative": start from the encoder's embeddings instead (the pipeline repeats them per image).
            embeds, n = self._encoder(first), self._encoder.num_images_per_prompt
            out.update(negative_prompt=None, negative_prompt_embeds=embeds.prompt_embeds[::n],
                       negative_pooled_prompt_embeds=embeds.pooled_prompt_embeds[::n])
            out.pop("negative_prompt_2", None)
        return out

    def _mixed_sdxl_start(self, key: NegativeKey) -> bool:
        """Whether pass 0 runs SDXL with some rows' negative on and some off (zeros for those)."""
        pipe = None if self._encoder is None else self._encoder.pipe
        return (pipe is not None and is_sdxl(pipe) and bool(pipe.config.get("force_zeros_for_empty_prompt", False))
                and any(t is None for t in key) and any(t is not None for t in key))

    def bind(self, pipe) -> "NegativeScheduleCallback":
        """Attach to ``pipe`` (sets the tensor inputs it needs); returns self."""
        check_family(pipe)
        self._tensor_inputs = ["prompt_embeds"] + (["add_text_embeds", "add_time_ids"] if is_sdxl(pipe) else [])
        self._encoder = NegativeEncoder(pipe, self.encode_kwargs)
        self._active = self.step_keys[0]
        self._pass_steps = None
        self.model_evaluations = 0
        return self

    @property
    def encoded_texts(self) -> list[NegativeKey]:
        """The distinct negatives this run encoded in the callback (each once)."""
        return [] if self._encoder is None else self._encoder.encoded_keys

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        if self._encoder is None or self._encoder.pipe is not pipeline:
            self.bind(pipeline)
        if self._pass_steps is None:
            self._pass_steps = step_of_passes(pipeline.scheduler)
            if self._pass_steps[-1] + 1 != len(self.step_keys):
                raise InputError(
                    "num_inference_steps",
                    self._pass_steps[-1] + 1,
                    f"the callback was planned for {len(self.step_keys)} steps",
                )
            if self.cfg_off and self._pag(pipeline):
                raise InputError("cfg_off", True, "not with perturbed-attention guidance (pag_scale > 0): PAG's batch keeps CFG's layout")
        self.model_evaluations += (2 if pipeline.do_classifier_free_guidance else 1) + self._pag(pipeline)
        next_pass = step_index + 1
        if next_pass >= len(self._pass_steps):
            return callback_kwargs
        key = self.step_keys[self._pass_steps[next_pass]]
        if key == self._active:
            return callback_kwargs
        self._switch(pipeline, self._active, key, callback_kwargs)
        self._active = key
        return callback_kwargs

    @staticmethod
    def _pag(pipeline) -> bool:
        """Whether the call runs perturbed-attention guidance (the PAG pipelines with ``pag_scale > 0``)."""
        return bool(getattr(pipeline, "do_perturbed_attention_guidance", False))

    def blocks(self, pipeline, key: NegativeKey) -> int:
        """Row blocks of the batch while ``key`` is active: the negative (under CFG), the positive, and
        the positive again for PAG's perturbed pass (diffusers' PAG pipelines stack ``[neg; pos; pos]``)."""
        return (2 if self._cfg_on(key) else 1) + self._pag(pipeline)

    def _switch(self, pipeline, old: NegativeKey, new: NegativeKey, kw: dict[str, Any]) -> None:
        """Rewrite the conditioning in ``kw`` from negative ``old`` to negative ``new``: only the negative
        block changes; the blocks after it (the positive, PAG's copy) are kept as the pipeline made them."""
        sdxl = is_sdxl(pipeline)
        was_cfg, now_cfg = self._cfg_on(old), self._cfg_on(new)
        rows = kw["prompt_embeds"].shape[0] // self.blocks(pipeline, old)
        names = ["prompt_embeds", "add_text_embeds", "add_time_ids"] if sdxl else ["prompt_embeds"]
        # What follows the negative block: everything but the first block under CFG, all of it without.
        rest = {name: kw[name][rows:] if was_cfg else kw[name] for name in names}
        if not now_cfg:
            pipeline._guidance_scale = 1.0
            kw.update(rest)
            return
        positive = rest["prompt_embeds"][:rows]
        # Each prompt's rows are consecutive: its images (num_images_per_prompt), and for AnimateDiff,
        # which repeats every row once per frame, its frames.
        per_prompt = rows // len(new)
        if self._encoder.positive is None:
            self._encoder.device = positive.device
            self._encoder.positive = NegativeEmbeds(positive[::per_prompt], rest["add_text_embeds"][:rows][::per_prompt] if sdxl else None)
        negative = self._encoder(new)  # a row per image; repeated below to the pipeline's rows (frames)
        frames = rows // negative.prompt_embeds.shape[0]
        pipeline._guidance_scale = self.scale(new)
        kw["prompt_embeds"] = torch.cat([negative.prompt_embeds.to(positive).repeat_interleave(frames, dim=0), rest["prompt_embeds"]])
        if sdxl:
            pooled = negative.pooled_prompt_embeds.to(rest["add_text_embeds"]).repeat_interleave(frames, dim=0)
            kw["add_text_embeds"] = torch.cat([pooled, rest["add_text_embeds"]])
            if not was_cfg:
                # Without negative size conditioning the pipeline uses the positive time ids for both halves.
                kw["add_time_ids"] = torch.cat([rest["add_time_ids"][:rows], rest["add_time_ids"]])
