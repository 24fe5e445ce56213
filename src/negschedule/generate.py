"""``generate(pipe, ...)``: a stock pipeline call with a timed negative prompt.

It takes every keyword of the pipeline's own ``__call__`` plus the timing arguments, checks them
before any work, plans which negative text is active at each step (``schedule.py`` decides), and
drives the pipeline's own loop through :class:`~negschedule.callbacks.NegativeScheduleCallback`.
The pipeline is neither copied nor forked, so every other feature of it keeps working, and its
own output type comes back.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from .callbacks import NegativeScheduleCallback
from .conditioning import NegativeKey, is_sdxl
from .errors import InputError
from .schedule import NegativeSchedule, NegativeWindow

# The arguments encode_prompt takes from the user's call, so negatives encode in the pipeline's own batch.
ENCODE_ARGS = ("prompt", "prompt_2", "prompt_embeds", "pooled_prompt_embeds", "clip_skip", "num_images_per_prompt")


def _check_negative_prompt_2(pipe, negative_prompt_2, prompt, negative_windows):
    """SDXL's second-encoder negative is timed with ``negative_prompt``: on exactly when it is."""
    from .conditioning import is_sdxl

    if not is_sdxl(pipe):
        raise InputError("negative_prompt_2", negative_prompt_2, "is for SDXL pipelines (a second text encoder)")
    if negative_windows:
        raise InputError("negative_prompt_2", negative_prompt_2, "cannot be combined with negative_windows (it follows negative_prompt's timing)")
    if isinstance(negative_prompt_2, list):
        if not isinstance(prompt, list) or len(prompt) != len(negative_prompt_2):
            raise InputError("negative_prompt_2", negative_prompt_2, "a list needs one text per prompt")
    elif not isinstance(negative_prompt_2, str):
        raise InputError("negative_prompt_2", negative_prompt_2, "a text or a list of texts")
    return normalize_texts(pipe, negative_prompt_2)


def call_defaults(pipe) -> dict[str, Any]:
    """Defaults of the pipeline's ``__call__`` (``num_inference_steps``, ``guidance_scale``, ...)."""
    params = inspect.signature(type(pipe).__call__).parameters
    return {
        name: p.default
        for name, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        if name != "self"
    }


def require_cfg(guidance_scale: float, argument: str = "guidance_scale") -> None:
    """Refuse a negative prompt under ``guidance_scale <= 1``: CFG is off then, so the negative does nothing."""
    if guidance_scale <= 1:
        raise InputError(argument, guidance_scale, "CFG is off at guidance_scale <= 1, so a negative prompt does nothing")


def check_no_prompt_editing(kwargs: dict[str, Any], steps: int) -> None:
    """Refuse A1111 prompt editing (``[a:b:when]``, ``[a|b]``) in ``prompt``/``prompt_2``: only the
    negative's conditioning is timed here, and read as emphasis the brackets would silently encode
    something else than A1111 samples (``[red:blue:0.5]`` as the words "red:blue:0.5" at weight 1/1.1)."""
    from .schedule import a1111_schedule

    for name in ("prompt", "prompt_2"):
        value = kwargs.get(name)
        for text in [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []:
            if isinstance(text, str) and "[" in text and a1111_schedule(text, steps) != [(steps, text)]:
                raise InputError(name, text, "A1111 prompt editing ([a:b:when], [a|b]) is read in the negative prompt "
                                             "only; only the negative's conditioning changes while sampling")


def check_scale_with_negative(value: Any) -> float | None:
    """``guidance_scale_with_negative`` as a float (None stays None): a finite number above 1, since
    it is the CFG scale of the steps where a negative acts."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError("guidance_scale_with_negative", value, "must be a number above 1 (the CFG scale while the negative acts)")
    require_cfg(float(value), "guidance_scale_with_negative")
    return float(value)


def batch_size(prompt: Any, prompt_embeds: Any) -> int:
    """Number of prompts in the call (before ``num_images_per_prompt``)."""
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    if prompt_embeds is not None:
        return prompt_embeds.shape[0]
    raise InputError("prompt", prompt, "give a prompt (a string or a list of strings) or prompt_embeds")


def _custom_step_count(pipe, timesteps, sigmas) -> int:
    """Steps a call with custom ``timesteps``/``sigmas`` makes: they, not num_inference_steps, decide.

    Asked of a copy of the scheduler, set the way the pipeline will set it, because schedulers read
    a custom list differently (Euler's sigmas include the last one, so 5 sigmas make 4 steps).
    """
    import copy

    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    from .passes import step_of_passes

    scheduler = copy.deepcopy(pipe.scheduler)
    try:
        retrieve_timesteps(scheduler, None, "cpu", timesteps=timesteps, sigmas=sigmas)
    except ValueError as err:
        name, value = ("timesteps", timesteps) if timesteps is not None else ("sigmas", sigmas)
        raise InputError(name, value, str(err).splitlines()[0]) from None
    return step_of_passes(scheduler)[-1] + 1


def plan_negatives(
    negative_prompt: str | Sequence[str] | None,
    num_inference_steps: int,
    batch: int,
    negative_start: int | float | None = None,
    negative_end: int | float | None = None,
    negative_windows: Sequence[NegativeWindow | tuple] = (),
) -> list[NegativeKey]:
    """Per step, the tuple of per-prompt negative texts active then (None = off). Validates everything."""
    if isinstance(negative_prompt, (list, tuple)):
        if len(negative_prompt) != batch:
            raise InputError(
                "negative_prompt", list(negative_prompt), f"has {len(negative_prompt)} entries for {batch} prompts"
            )
        per_prompt = list(negative_prompt)
    else:
        per_prompt = [negative_prompt] * batch
    columns = []
    for text in per_prompt:
        schedule = NegativeSchedule.from_args(text, negative_start, negative_end, windows=negative_windows)
        schedule.validate(num_inference_steps)
        columns.append(schedule.texts(num_inference_steps))
    return [tuple(column[s] for column in columns) for s in range(num_inference_steps)]


def normalize_texts(pipe, text: str | list[str]) -> str | list[str]:
    """Textual-inversion tokens in the form the pipeline expands (see textual_inversion.py)."""
    from .textual_inversion import normalize_prompt

    if isinstance(text, list):
        return [normalize_prompt(pipe, t) for t in text]
    return normalize_prompt(pipe, text)


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def plan_encoding(pipe, kwargs: dict[str, Any], step_keys: list[NegativeKey]):
    """Stock text path or A1111 encoding (long_prompts.py)? Returns (WeightedConditioning or None, step keys).

    When no text has a weight other than 1, a BREAK or more than one chunk of tokens, the texts go
    to the pipeline as plain text with A1111's syntax taken out (``(x:1.0)`` is ``x``, ``\\(`` is
    ``(``), so plain prompts stay bit-exact with the stock pipeline. Otherwise the prompt
    arguments in ``kwargs`` are replaced by the conditioning that will hand out embeddings.
    """
    from .emphasis import plain_text
    from .long_prompts import WeightedConditioning, needs_a1111_encoding

    texts = [(name, text) for name in ("prompt", "prompt_2") for text in _texts(kwargs.get(name))]
    texts += [("negative_prompt", text) for text in dict.fromkeys(t for key in step_keys for t in key if t is not None)]
    # Every text is parsed (no short-circuit), so a malformed weight is refused before any work.
    needed = [needs_a1111_encoding(pipe, text, name) for name, text in texts]
    # diffusers' SD encode_prompt reads text_encoder.text_model for clip_skip, which transformers 5's
    # CLIPTextModel no longer has: the stock path would fail, so clip_skip takes the A1111 path there.
    text_encoder = getattr(pipe, "text_encoder", None)
    if kwargs.get("clip_skip") is not None and text_encoder is not None and not is_sdxl(pipe):
        needed.append(not hasattr(text_encoder, "text_model"))
    if not any(needed):
        for name in ("prompt", "prompt_2"):
            value = kwargs.get(name)
            if value is not None:
                kwargs[name] = plain_text(value) if isinstance(value, str) else [plain_text(t) for t in value]
        plain = {t: plain_text(t) for _, t in texts}
        return None, [tuple(None if t is None or not plain[t].strip() else plain[t] for t in key) for key in step_keys]
    lora_scale = (kwargs.get("cross_attention_kwargs") or {}).get("scale")
    weighted = WeightedConditioning(
        pipe,
        prompt=kwargs.pop("prompt", None),
        prompt_2=kwargs.pop("prompt_2", None),
        prompt_embeds=kwargs.pop("prompt_embeds", None),
        pooled_prompt_embeds=kwargs.pop("pooled_prompt_embeds", None),
        num_images_per_prompt=kwargs.get("num_images_per_prompt") or 1,
        clip_skip=kwargs.pop("clip_skip", None),
        lora_scale=lora_scale,
    )
    return weighted, step_keys


def _combine(ours: NegativeScheduleCallback, theirs) -> Any:
    """Run our callback, then the user's own ``callback_on_step_end`` on the updated tensors."""
    if theirs is None:
        return ours
    if isinstance(theirs, (PipelineCallback, MultiPipelineCallbacks)):
        return MultiPipelineCallbacks([ours, theirs])

    def both(pipeline, step_index, timestep, callback_kwargs):
        callback_kwargs = ours(pipeline, step_index, timestep, callback_kwargs)
        callback_kwargs.update(theirs(pipeline, step_index, timestep, callback_kwargs) or {})
        return callback_kwargs

    return both


def _needs_engine(guidance, negative_start) -> bool:
    """Rules other than (timed) CFG, and ``negative_start="auto"``, run in the engine (guided.py)."""
    from .guidance import Guidance, GuidanceRule

    from .auto import AutoStart

    if isinstance(negative_start, (str, AutoStart)):
        return True
    return Guidance.of(guidance).rule not in (GuidanceRule.CFG, GuidanceRule.TIMED)


def generate(
    pipe,
    *,
    negative_start: int | float | None = None,
    negative_end: int | float | None = None,
    negative_windows: Sequence[NegativeWindow | tuple] = (),
    cfg_off: bool = False,
    guidance=None,
    guidance_scale_with_negative: float | None = None,
    **kwargs: Any,
):
    """Call ``pipe`` with its own keywords and a negative prompt that acts only in a window of steps.

    ``negative_start`` / ``negative_end``: an int is a 0-based step, a float in [0, 1] a fraction of
    ``num_inference_steps`` (``int(f * N)``); the window is half-open ``[start, end)``. A
    :class:`~negschedule.schedule.Sigma` or :class:`~negschedule.schedule.TimestepPercent` bound is a
    noise level: the negative acts at the steps whose sigma lies in ``[sigma_end, sigma_start]``, as
    ComfyUI's ``ConditioningSetTimestepRange`` (``TimestepPercent(0.2)`` is its ``start_percent`` 0.2).
    ``negative_windows``: further ``NegativeWindow(prompt, start, end)`` (or tuples), each acting in
    its own window; texts active together are joined with ", ". The negative prompt may use
    AUTOMATIC1111 prompt editing (``[:glasses:0.2]``). Prompt and negative may use A1111 emphasis
    (``(x:1.3)``, ``(x)``, ``[x]``, ``BREAK``) and run past 77 tokens: such texts are encoded the
    A1111 way (``long_prompts.py``), all others by the stock pipeline. ``cfg_off``: while no
    negative is active, run without CFG (positive prediction only) instead of CFG with the empty prompt.
    ``guidance_scale_with_negative``: the CFG scale at the steps where a negative acts (None: the
    call's ``guidance_scale`` throughout); a late start loses removal, a stronger negative from it
    wins much of it back and keeps the structure the late start kept (docs/guidance.md).
    Returns the pipeline's own output.

    ``guidance``: a :class:`~negschedule.guidance.Guidance` or rule name (``"cfg"``, ``"timed"``,
    ``"negative_scale"``, ``"perp_neg"``, ``"sigma_window"``, ``"dng"``); ``negative_start="auto"``
    (or an :class:`~negschedule.auto.AutoStart` with other settings) finds the start while sampling. Plain CFG (the default) and the timed negative
    run here on the stock pipeline; the other rules and "auto" run in the engine (``guided.py``),
    whose loop draws the pipeline's progress bar and calls ``callback_on_step_end`` too, offering
    the latents only.
    """
    from .noise_levels import resolve_noise_levels

    if kwargs.get("negative_prompt") is not None or negative_windows:
        from .conditioning import check_family

        check_family(pipe)
    # Sigma / timestep-percent bounds become steps first, so everything below sees steps only.
    negative_start, negative_end, negative_windows = resolve_noise_levels(pipe, kwargs, negative_start, negative_end, negative_windows)
    guidance_scale_with_negative = check_scale_with_negative(guidance_scale_with_negative)
    if guidance_scale_with_negative is not None and kwargs.get("negative_prompt") is None and not negative_windows:
        raise InputError("guidance_scale_with_negative", guidance_scale_with_negative, "needs a negative_prompt to act with")
    if _needs_engine(guidance, negative_start):
        if negative_windows or cfg_off:
            raise InputError("negative_windows" if negative_windows else "cfg_off", negative_windows or cfg_off, "not combined with this guidance")
        if kwargs.get("negative_prompt_2") is not None:
            raise InputError("negative_prompt_2", kwargs["negative_prompt_2"], "is timed with plain CFG only (a fixed negative_start, guidance=cfg)")
        from .guided import generate_guided

        return generate_guided(pipe, guidance, negative_start, negative_end, guidance_scale_with_negative=guidance_scale_with_negative, **kwargs)
    defaults = call_defaults(pipe)
    # The stock __call__ also takes **kwargs, but only for deprecated arguments: a typo must not pass silently.
    unknown = sorted(set(kwargs) - set(defaults) - {"prompt"})
    if unknown:
        raise InputError(unknown[0], kwargs[unknown[0]], f"not an argument of {type(pipe).__name__}.__call__")
    steps = kwargs.get("num_inference_steps", defaults.get("num_inference_steps", 50))
    if kwargs.get("timesteps") is not None or kwargs.get("sigmas") is not None:
        steps = _custom_step_count(pipe, kwargs.get("timesteps"), kwargs.get("sigmas"))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise InputError("num_inference_steps", steps, "must be a positive integer")
    check_no_prompt_editing(kwargs, steps)  # the engine's paths (guidance rules, auto) check it there
    guidance_scale = kwargs.get("guidance_scale", defaults.get("guidance_scale", 7.5))

    prompt = kwargs.get("prompt")
    if prompt is not None:
        kwargs["prompt"] = normalize_texts(pipe, prompt)
    negative_prompt = kwargs.pop("negative_prompt", None)
    has_negative = negative_prompt is not None or bool(negative_windows)
    if not has_negative:
        if negative_start is not None or negative_end is not None:
            name, value = ("negative_start", negative_start) if negative_start is not None else ("negative_end", negative_end)
            raise InputError(name, value, "needs a negative_prompt to time")
        weighted, _ = plan_encoding(pipe, kwargs, [])
        if weighted is not None:
            cfg = guidance_scale > 1 and kwargs.get("negative_prompt_embeds") is None
            kwargs.update(weighted.pipeline_kwargs(weighted.off_key, cfg=cfg))
            return pipe(**kwargs)
        return pipe(negative_prompt=None, **kwargs)
    for name in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
        if kwargs.get(name) is not None:
            raise InputError(name, "<given>", "cannot be timed: give negative_prompt as text")
    negative_prompt_2 = kwargs.pop("negative_prompt_2", None)
    if negative_prompt_2 is not None:
        negative_prompt_2 = _check_negative_prompt_2(pipe, negative_prompt_2, prompt, negative_windows)
    require_cfg(guidance_scale)
    if cfg_off and any(kwargs.get(n) is not None for n in ("negative_original_size", "negative_target_size")):
        raise InputError("cfg_off", cfg_off, "cannot be combined with negative size conditioning")
    if cfg_off and any(kwargs.get(n) is not None for n in ("ip_adapter_image", "ip_adapter_image_embeds")):
        # The pipeline prepares the image embeddings for CFG on or off once, before its loop.
        raise InputError("cfg_off", cfg_off, "cannot be combined with an IP-Adapter image")
    if cfg_off and float(kwargs.get("pag_scale", defaults.get("pag_scale", 0.0))) > 0:  # 0: a pipeline without PAG
        # PAG picks its attention processors for CFG on or off once, at the start of the call.
        raise InputError("cfg_off", cfg_off, "cannot be combined with perturbed-attention guidance (pag_scale > 0)")

    step_keys = plan_negatives(
        negative_prompt,
        steps,
        batch_size(prompt, kwargs.get("prompt_embeds")),
        negative_start,
        negative_end,
        negative_windows,
    )
    step_keys = [tuple(None if text is None else normalize_texts(pipe, text) for text in key) for key in step_keys]
    weighted, step_keys = plan_encoding(pipe, kwargs, step_keys)
    if negative_prompt_2 is not None and weighted is not None:
        raise InputError("negative_prompt_2", negative_prompt_2, "cannot be combined with A1111 weights or prompts over 75 tokens")
    encode_kwargs = {name: kwargs[name] for name in ENCODE_ARGS if kwargs.get(name) is not None}
    if negative_prompt_2 is not None:
        encode_kwargs["negative_prompt_2"] = negative_prompt_2
    lora_scale = (kwargs.get("cross_attention_kwargs") or {}).get("scale")
    if lora_scale is not None:
        encode_kwargs["lora_scale"] = lora_scale
    if guidance_scale_with_negative is not None and guidance_scale_with_negative != guidance_scale:
        from .callbacks import reads_scale_every_pass, step_scale

        changes = len({step_scale(k, guidance_scale, guidance_scale_with_negative) for k in step_keys}) > 1
        if changes and not reads_scale_every_pass(pipe):
            raise InputError("guidance_scale_with_negative", guidance_scale_with_negative,
                             f"{type(pipe).__name__} combines CFG with the scale it was called with, so the scale cannot "
                             f"change where the negative starts or ends (a negative on every step works)")
    if weighted is None:
        callback = NegativeScheduleCallback(step_keys, encode_kwargs, guidance_scale, cfg_off=cfg_off,
                                            guidance_scale_with_negative=guidance_scale_with_negative).bind(pipe)
    else:
        from .long_prompts import WeightedNegativeScheduleCallback

        callback = WeightedNegativeScheduleCallback(step_keys, weighted, guidance_scale, cfg_off=cfg_off,
                                                    guidance_scale_with_negative=guidance_scale_with_negative).bind(pipe)

    if "callback_on_step_end" not in defaults:
        # Older community-style pipelines (SAG, Attend-and-Excite, GLIGEN, ...) offer no per-step hook.
        if any(key != step_keys[0] for key in step_keys):
            raise InputError("pipe", type(pipe).__name__, "has no callback_on_step_end, so a negative cannot be timed "
                                                          "on it (a negative on every step, or none, works)")
        kwargs.update(callback.pipeline_kwargs())  # step 0's state holds for the whole run (CFG off included)
        kwargs.pop("callback_on_step_end")
        return pipe(**kwargs)

    user_callback = kwargs.pop("callback_on_step_end", None)
    tensor_inputs = list(callback.tensor_inputs)
    if user_callback is not None:
        theirs = (
            user_callback.tensor_inputs
            if isinstance(user_callback, (PipelineCallback, MultiPipelineCallbacks))
            else kwargs.get("callback_on_step_end_tensor_inputs") or ["latents"]
        )
        tensor_inputs += [name for name in theirs if name not in tensor_inputs]
    start = callback.pipeline_kwargs()
    start.pop("callback_on_step_end", None)
    kwargs.update(
        start,
        callback_on_step_end=_combine(callback, user_callback),
        callback_on_step_end_tensor_inputs=tensor_inputs,
    )
    try:
        return pipe(**kwargs)
    finally:
        # The callback may have flipped CFG off; leave the pipeline as the user would expect it.
        pipe._guidance_scale = guidance_scale
