"""A step-by-step sampler over a pipeline's own parts, with branches that share their prefixes.

This module owns sampling *many* runs of one prompt at once: the runs of a critical-step sweep,
of a removal curve, of windowed negatives. Each run is a :class:`Run` (its negative timing, the
arguments :func:`negschedule.generate` takes besides the pipeline's own); ``schedule.py`` turns it
into one key per step (the active negative texts and whether CFG runs). Runs of one seed whose
keys agree on steps ``0..k-1`` are the same computation up to step ``k``, so the engine samples
them once, as one *branch*, and splits the branch at the first step where their keys differ. A
split deep-copies everything that evolves: the latents (new tensors each step), the scheduler
(multistep schedulers - DPM++ 2M, PNDM, LMS, Heun - keep a history of model outputs) and the
random generator (DDPM and ancestral samplers draw noise every step; each branch continues the
stream exactly where an independent run would be).

The loop is the stock pipeline's loop, reassembled from the pipeline's own methods
(``encode_prompt`` through :class:`~negschedule.conditioning.NegativeEncoder`, ``prepare_latents``,
``prepare_extra_step_kwargs``, ``scheduler.step``, ``vae.decode``, ``image_processor.postprocess``),
so every run is bit-identical to an independent ``generate(pipe, generator=torch.Generator()
.manual_seed(seed), ...)`` call - the tests hold this for every scheduler in ``schedulers.py``.

Batching. Measured on the tiny pipeline with torch 2.13 on CPU: the UNet's output rows are
bit-identical between a batch of 2 and a batch of 4, but differ in the last bits (about 1e-6)
from a batch of 6 on - CPU kernels pick their blocking by shape. So batching branches into one UNet
call is not bit-exact against ``generate()`` in general, and the engine offers three ways
(:class:`Batching`):

* ``PER_BRANCH`` (the default): each branch gets its own UNet call in exactly the layout of an
  independent run (a CFG batch of 2 rows per image), so every image is bit-identical to its
  ``generate()`` call by construction.
* ``CALIBRATED``: branches are grouped into one call in groups of a size that has been seen to
  reproduce the per-branch outputs bit for bit *on this machine, for these shapes*: the first time
  enough branches are live, a group of 2 (then 4, 8, ...) is evaluated both ways on the real
  inputs, the per-branch results are the ones used, and the group size is kept while it matches.
  Kernel choice depends on shapes, not values, so this is strong evidence rather than a proof;
  the tests hold it bit-exact on every scheduler here (on this CPU it settles on pairs: ~30 %
  fewer seconds per evaluation). The checks cost a few extra evaluations, counted apart in
  ``calibration_evaluations``.
* ``ALL``: every live branch in one call per pass - the fastest, equal to ``generate()`` only to
  about 1e-6 on the CPU; on a GPU with TF32 convolutions (PyTorch's default there) the rows of
  different batch sizes differ more, about 1e-2 in the latents of the tiny pipeline. On an H100 in
  float16 ``PER_BRANCH`` already takes 0.54 of the time of separate generations for a full start
  sweep, ``CALIBRATED`` no less, ``ALL`` 0.47 at 1.8x the memory (``benchmarks/README.md``).

Either way the prefix sharing, which is where most of the saving comes from, is exact.

Text encoding follows ``generate()`` run by run: a run whose texts need AUTOMATIC1111's weights,
chunks or ``BREAK`` is encoded by ``long_prompts.WeightedConditioning``, others by the stock
``encode_prompt`` with the syntax taken out. Runs of the two kinds never share a branch (the
encoding mode is part of every step key), because their embeddings need not agree in the last bit.

Model evaluations are counted the way the reports show them: one per latent per model pass, so a
CFG pass on one latent counts 2 and a pass with CFG off counts 1.
"""

from __future__ import annotations

import copy
import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .callbacks import step_scale
from .conditioning import NegativeEncoder, NegativeKey, is_sdxl
from .errors import InputError
from .generate import ENCODE_ARGS, batch_size, call_defaults, check_no_prompt_editing, check_scale_with_negative, normalize_texts, plan_encoding, plan_negatives, require_cfg
from .passes import step_of_passes

# One step's conditioning: the per-prompt negative texts (None = off), CFG's scale (None: CFG off), and whether
# the texts are encoded the A1111 way (see long_prompts.py).
StepKey = tuple  # tuple[NegativeKey, CFG scale or None (CFG off: one evaluation), A1111-encoded: bool]

# Pipeline keywords the engine reproduces; anything else is refused rather than silently ignored.
_SUPPORTED = {
    "prompt",
    "prompt_2",
    "num_inference_steps",
    "guidance_scale",
    "guidance_rescale",
    "height",
    "width",
    "eta",
    "num_images_per_prompt",
    "clip_skip",
    "cross_attention_kwargs",
    "output_type",
    "original_size",
    "crops_coords_top_left",
    "target_size",
}


@dataclass(frozen=True)
class Run:
    """One run's negative timing: what :func:`negschedule.generate` takes besides the pipeline's keywords."""

    negative_prompt: str | None = None  # may use A1111 prompt editing
    negative_start: int | float | None = None  # int: 0-based step; float in [0, 1]: fraction of the steps
    negative_end: int | float | None = None  # exclusive; same units; None: to the last step
    negative_windows: tuple = ()  # further schedule.NegativeWindow(prompt, start, end) or (prompt, start, end) tuples
    cfg_off: bool = False  # CFG off (one evaluation) while no negative is active
    guidance_scale_with_negative: float | None = None  # CFG's scale where a negative acts (None: the engine's guidance_scale)

    def generate_kwargs(self) -> dict[str, Any]:
        """The keywords that give this run through :func:`negschedule.generate`."""
        out: dict[str, Any] = {}
        if self.negative_prompt is not None:
            out["negative_prompt"] = self.negative_prompt
        if self.negative_start is not None:
            out["negative_start"] = self.negative_start
        if self.negative_end is not None:
            out["negative_end"] = self.negative_end
        if self.negative_windows:
            out["negative_windows"] = list(self.negative_windows)
        if self.cfg_off:
            out["cfg_off"] = True
        if self.guidance_scale_with_negative is not None:
            out["guidance_scale_with_negative"] = self.guidance_scale_with_negative
        return out


class Batching(enum.Enum):
    """How the live branches of a pass share UNet calls (see the module docstring)."""

    PER_BRANCH = "per_branch"  # one call per branch, the reference layout: bit-exact by construction
    CALIBRATED = "calibrated"  # groups of a size checked bit-identical on the real inputs here
    ALL = "all"  # one call for all branches: fastest, equal to generate() to ~1e-6 only


@dataclass(frozen=True)
class EngineConfig:
    """How the engine spends compute; only ``Batching.ALL`` changes the images (in the last bits)."""

    batching: Batching = Batching.PER_BRANCH
    # Keep the state at every step boundary of every branch, so later calls on the same Engine
    # (the rounds of a removal-curve search) resume from the longest prefix already sampled.
    cache_prefixes: bool = False
    # At most this many cached states (oldest dropped first): each holds latents and a scheduler copy.
    max_cached_states: int = 4096


@dataclass
class _State:
    """Everything that evolves along a branch; copied when the branch splits."""

    latents: torch.Tensor
    scheduler: Any
    generator: torch.Generator

    def copy(self) -> "_State":
        return _State(self.latents, copy.deepcopy(self.scheduler), _clone_generator(self.generator))


@dataclass
class _Branch:
    seed: int
    runs: list[int]  # indices of the runs that are this same computation so far
    state: _State
    prefix: tuple = ()  # step keys of the steps done, for the prefix cache


@dataclass
class EngineResult:
    """Outputs of :meth:`Engine.sample`: ``images[seed][run]`` in the requested ``output_type``."""

    seeds: list[int]
    runs: list[Run]
    images: dict[int, list[Any]]  # seed -> one output per run (a PIL image, array, tensor or latents)
    latents: dict[int, list[torch.Tensor]]  # seed -> final latents per run
    model_evaluations: int  # one per latent per model pass (CFG on one latent counts 2)
    unet_calls: int
    independent_evaluations: int  # what the same runs would cost as independent generate() calls
    calibration_evaluations: int = 0  # extra evaluations spent checking Batching.CALIBRATED group sizes

    def image(self, seed: int, run: int):
        return self.images[seed][run]


def _clone_generator(generator: torch.Generator) -> torch.Generator:
    clone = torch.Generator(device=generator.device)
    clone.set_state(generator.get_state())
    return clone


class Engine:
    """Samples many runs of one prompt on ``pipe``, sharing prefixes; reusable across calls.

    ``pipeline_kwargs`` are the pipeline's own keywords (``prompt``, ``num_inference_steps``,
    ``guidance_scale``, ``height``, ...), fixed for the engine's life; the runs and seeds vary per
    :meth:`sample` call.
    """

    def __init__(self, pipe, config: EngineConfig | None = None, **pipeline_kwargs: Any):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        # The loop below is those two pipelines' loop; others (img2img, inpainting, ...) differ in it.
        if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
            raise InputError("pipe", type(pipe).__name__, "the engine drives text-to-image SD and SDXL pipelines only")
        self.pipe = pipe
        self.config = config or EngineConfig()
        unknown = sorted(set(pipeline_kwargs) - _SUPPORTED)
        if unknown:
            raise InputError(unknown[0], pipeline_kwargs[unknown[0]], "not supported by the engine (use generate())")
        defaults = call_defaults(pipe)
        kw = {name: pipeline_kwargs.get(name, defaults.get(name)) for name in _SUPPORTED if name in defaults or name in pipeline_kwargs}
        self.sdxl = is_sdxl(pipe)
        steps = kw.get("num_inference_steps", 50)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise InputError("num_inference_steps", steps, "must be a positive integer")
        if kw.get("prompt") is None:
            raise InputError("prompt", None, "the engine needs a prompt (a string or a list of strings)")
        if pipe.unet.config.time_cond_proj_dim is not None:
            raise InputError("pipe", type(pipe).__name__, "guidance-distilled UNets (time_cond_proj_dim) have no CFG to time")
        self.steps = steps
        self.guidance_scale = float(kw.get("guidance_scale", 7.5))
        self.guidance_rescale = float(kw.get("guidance_rescale") or 0.0)
        self.eta = kw.get("eta", 0.0)
        self.output_type = kw.get("output_type") or "pil"
        self.cross_attention_kwargs = kw.get("cross_attention_kwargs")
        self.num_images_per_prompt = kw.get("num_images_per_prompt") or 1
        kw["prompt"] = normalize_texts(pipe, kw["prompt"])
        if kw.get("prompt_2") is not None:
            kw["prompt_2"] = normalize_texts(pipe, kw["prompt_2"])
        self.prompt = kw["prompt"]
        self.batch = batch_size(self.prompt, None)
        # What plan_encoding decides from: the texts and the encoding arguments of the call.
        self._text_kwargs = {n: kw[n] for n in ("prompt", "prompt_2", "num_images_per_prompt", "clip_skip", "cross_attention_kwargs") if kw.get(n) is not None}
        self._weighted = None  # the WeightedConditioning shared by every A1111-encoded run
        self._modes: dict[frozenset, bool] = {}
        self.height = kw.get("height") or pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.width = kw.get("width") or pipe.unet.config.sample_size * pipe.vae_scale_factor
        self._sizes = {n: kw.get(n) for n in ("original_size", "crops_coords_top_left", "target_size")}

        check_no_prompt_editing(self._text_kwargs, steps)  # as generate(): only the negative is timed
        plain = dict(self._text_kwargs)
        plan_encoding(pipe, plain, [])  # strips A1111 syntax from plain prompts, as generate() does
        encode_kwargs = {name: plain[name] for name in ENCODE_ARGS if plain.get(name) is not None}
        lora_scale = (self.cross_attention_kwargs or {}).get("scale")
        if lora_scale is not None:
            encode_kwargs["lora_scale"] = lora_scale
        self._encode_kwargs = encode_kwargs
        self._encoder = NegativeEncoder(pipe, encode_kwargs)
        self._positive: dict[bool, dict[str, torch.Tensor]] = {}
        self._conditioning: dict[StepKey, dict[str, torch.Tensor]] = {}
        self._cache: OrderedDict[tuple, _State] = OrderedDict()

        # The pass-to-step map and timesteps, from a private scheduler: pipe.scheduler is not touched.
        self._template = copy.deepcopy(pipe.scheduler)
        self._template.set_timesteps(steps, device=self.device)
        self.timesteps = self._template.timesteps
        self.pass_steps = step_of_passes(self._template)
        self.model_evaluations = 0
        self.unet_calls = 0
        self.calibration_evaluations = 0
        # Batching.CALIBRATED: per input-shape signature, the group sizes seen to be bit-identical
        # to per-branch calls, and the signatures where a larger group was seen to differ.
        self._exact_sizes: dict[tuple, set[int]] = {}
        self._refuted: set[tuple] = set()
        if not isinstance(self.config.batching, Batching):
            raise InputError("batching", self.config.batching, f"choose one of {', '.join(b.value for b in Batching)}")
        # Called after every UNet call with (evaluations in that call, evaluations so far).
        self.on_evaluations: Callable[[int, int], None] | None = None
        # Called before every branch's UNet call with (seed, runs, step); attention capture uses it.
        self.on_branch_pass: Callable[[int, list[int], int], None] | None = None

    @property
    def device(self):
        return getattr(self.pipe, "_execution_device", None) or self.pipe.device

    # ---- planning -------------------------------------------------------------------------------

    def step_keys(self, run: Run) -> list[StepKey]:
        """Per step, the conditioning ``run`` uses: validated by ``schedule.py`` before any work.

        A key is (the negative texts, CFG's scale at that step or None where CFG is off, whether the
        texts are A1111-encoded): runs share a branch while their keys agree, so a run with another
        scale where its negative acts splits off there."""
        has_negative = run.negative_prompt is not None or bool(run.negative_windows)
        scale_on = check_scale_with_negative(run.guidance_scale_with_negative)
        if not has_negative:
            if run.negative_start is not None or run.negative_end is not None or scale_on is not None:
                name = next(n for n in ("negative_start", "negative_end", "guidance_scale_with_negative") if getattr(run, n) is not None)
                raise InputError(name, getattr(run, name), "needs a negative_prompt to " + ("act with" if name == "guidance_scale_with_negative" else "time"))
            keys = [tuple([None] * self.batch)] * self.steps
            weighted = self._mode(keys)
            return [(key, self.guidance_scale, weighted) for key in keys]
        require_cfg(self.guidance_scale)
        from .noise_levels import resolve_noise_levels

        start, end, windows = resolve_noise_levels(
            self.pipe, {}, run.negative_start, run.negative_end, run.negative_windows, num_inference_steps=self.steps
        )
        keys = plan_negatives(run.negative_prompt, self.steps, self.batch, start, end, windows)
        keys = [tuple(None if text is None else normalize_texts(self.pipe, text) for text in key) for key in keys]
        weighted = self._mode(keys)
        if not weighted:
            _, keys = plan_encoding(self.pipe, dict(self._text_kwargs), keys)

        return [(key, step_scale(key, self.guidance_scale, scale_on, run.cfg_off), weighted) for key in keys]

    def _mode(self, keys: list[NegativeKey]) -> bool:
        """Whether generate() would encode a run with these step keys the A1111 way."""
        texts = frozenset(t for key in keys for t in key if t is not None)
        if texts not in self._modes:
            weighted, _ = plan_encoding(self.pipe, dict(self._text_kwargs), list(dict.fromkeys(keys)))
            if weighted is not None and self._weighted is None:
                self._weighted = weighted
            self._modes[texts] = weighted is not None
        return self._modes[texts]

    def planned_evaluations(self, runs: Sequence[Run], seeds: Sequence[int]) -> tuple[int, int]:
        """(evaluations with prefix sharing, evaluations as independent runs), before any work."""
        keys = [self.step_keys(run) for run in runs]
        per_latent = self.batch * self.num_images_per_prompt
        shared = independent = 0
        for p, step in enumerate(self.pass_steps):
            distinct = {tuple(k[: step + 1]) for k in keys}
            shared += sum(1 if prefix[-1][1] is None else 2 for prefix in distinct)
            independent += sum(1 if k[step][1] is None else 2 for k in keys)
        return shared * per_latent * len(seeds), independent * per_latent * len(seeds)

    # ---- conditioning ---------------------------------------------------------------------------

    def _positive_embeds(self, weighted: bool = False, negative_key: NegativeKey | None = None) -> dict[str, torch.Tensor]:
        """The positive conditioning; A1111-encoded it is padded to the length ``negative_key`` needs."""
        if weighted:
            key = negative_key if negative_key is not None else self._weighted.off_key
            out = {"embeds": self._weighted.positive(key)}
            if self.sdxl:
                pooled = self._weighted.pipeline_kwargs(key, cfg=False)["pooled_prompt_embeds"]
                out["pooled"] = pooled.repeat_interleave(self.num_images_per_prompt, dim=0)
                out["time_ids"] = self._time_ids(out["embeds"].dtype, out["pooled"])
            return out
        if False not in self._positive:
            pipe = self.pipe
            with torch.no_grad():
                if self.sdxl:
                    out = pipe.encode_prompt(device=self.device, do_classifier_free_guidance=False, **self._encode_kwargs)
                    embeds, pooled = out[0], out[2]
                    self._positive[False] = {"embeds": embeds, "pooled": pooled, "time_ids": self._time_ids(embeds.dtype, pooled)}
                else:
                    kwargs = {"prompt": None, "num_images_per_prompt": 1, **self._encode_kwargs}
                    prompt = kwargs.pop("prompt")
                    nipp = kwargs.pop("num_images_per_prompt")
                    embeds, _ = pipe.encode_prompt(prompt, self.device, nipp, False, **kwargs)
                    self._positive[False] = {"embeds": embeds}
        return self._positive[False]

    def _time_ids(self, dtype, pooled: torch.Tensor) -> torch.Tensor:
        """SDXL's micro-conditioning ids for one row, from the pipeline's own ``_get_add_time_ids``."""
        pipe = self.pipe
        projection = int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
        original = self._sizes["original_size"] or (self.height, self.width)
        target = self._sizes["target_size"] or (self.height, self.width)
        crops = self._sizes["crops_coords_top_left"] or (0, 0)
        return pipe._get_add_time_ids(original, crops, target, dtype=dtype, text_encoder_projection_dim=projection)

    def _condition(self, key: StepKey) -> dict[str, torch.Tensor]:
        """The UNet's conditioning for one branch pass, built as the stock pipeline builds it."""
        if key in self._conditioning:
            return self._conditioning[key]
        negative_key, scale, weighted = key
        pos = self._positive_embeds(weighted, negative_key)
        rows = self.batch * self.num_images_per_prompt
        device = self.device
        out: dict[str, torch.Tensor] = {}
        if scale is not None:
            neg = self._weighted.negative(negative_key) if weighted else self._encoder(negative_key)
            out["encoder_hidden_states"] = torch.cat([neg.prompt_embeds.to(pos["embeds"]), pos["embeds"]]).to(device)
            if self.sdxl:
                out["text_embeds"] = torch.cat([neg.pooled_prompt_embeds.to(pos["pooled"]), pos["pooled"]]).to(device)
                out["time_ids"] = torch.cat([pos["time_ids"], pos["time_ids"]]).to(device).repeat(rows, 1)
        else:
            out["encoder_hidden_states"] = pos["embeds"].to(device)
            if self.sdxl:
                out["text_embeds"] = pos["pooled"].to(device)
                out["time_ids"] = pos["time_ids"].to(device).repeat(rows, 1)
        self._conditioning[key] = out
        return out

    # ---- sampling -------------------------------------------------------------------------------

    def _root(self, seed: int, weighted: bool) -> _State:
        pipe = self.pipe
        scheduler = copy.deepcopy(self._template)
        if self.sdxl and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        generator = torch.Generator().manual_seed(seed)
        dtype = self._positive_embeds(weighted)["embeds"].dtype
        # prepare_latents scales the noise by the pipeline's scheduler's init_noise_sigma, which for
        # "leading" spacing (SDXL's Euler) depends on that scheduler's last set_timesteps; the stock
        # call sets it for these steps first. The engine leaves the pipeline's scheduler alone, so
        # the stock method runs against this run's own scheduler instead.
        own = pipe.__dict__.get("scheduler")
        pipe.__dict__["scheduler"] = scheduler
        try:
            latents = pipe.prepare_latents(
                self.batch * self.num_images_per_prompt,
                pipe.unet.config.in_channels,
                self.height,
                self.width,
                dtype,
                self.device,
                generator,
                None,
            )
        finally:
            if own is None:
                pipe.__dict__.pop("scheduler", None)
            else:
                pipe.__dict__["scheduler"] = own
        return _State(latents, scheduler, generator)

    def clear_cache(self) -> None:
        """Forget every cached prefix state (see ``EngineConfig.cache_prefixes``)."""
        self._cache.clear()

    def _cache_put(self, prefix: tuple, state: _State) -> None:
        if prefix in self._cache:
            self._cache.move_to_end(prefix)
            return
        self._cache[prefix] = state.copy()
        while len(self._cache) > self.config.max_cached_states:
            self._cache.popitem(last=False)

    def _start_branches(self, seed: int, keys: list[list[StepKey]], runs: list[int]) -> list[tuple[int, _Branch]]:
        """Branches to start for ``runs`` of ``seed``: (first step, branch), resuming from the cache where it can."""
        groups: dict[tuple, list[int]] = {}
        for r in runs:
            prefix: tuple = ()
            if self.config.cache_prefixes:
                for k in range(self.steps, 0, -1):
                    candidate = (seed,) + tuple(keys[r][:k])
                    if candidate in self._cache:
                        prefix = tuple(keys[r][:k])
                        break
            groups.setdefault(prefix, []).append(r)
        out = []
        for prefix, members in groups.items():
            state = self._cache[(seed,) + prefix].copy() if prefix else self._root(seed, keys[members[0]][0][2])
            out.append((len(prefix), _Branch(seed, members, state, prefix)))
        return out

    def sample(self, runs: Sequence[Run], seeds: Sequence[int]) -> EngineResult:
        """Sample every run for every seed; each equals ``generate(pipe, generator=torch.Generator().manual_seed(seed), ...)``."""
        runs = list(runs)
        seeds = [int(s) for s in seeds]
        if not runs:
            raise InputError("runs", runs, "give at least one run")
        if not seeds or len(set(seeds)) != len(seeds):
            raise InputError("seeds", seeds, "give at least one seed, each once")
        keys = [self.step_keys(run) for run in runs]
        _, independent = self.planned_evaluations(runs, seeds)
        evaluations_before, calls_before = self.model_evaluations, self.unet_calls
        calibration_before = self.calibration_evaluations

        pending: list[tuple[int, _Branch]] = []
        for seed in seeds:
            pending += self._start_branches(seed, keys, list(range(len(runs))))
        pending.sort(key=lambda item: item[0])
        live: list[_Branch] = []
        finished: list[_Branch] = []
        extra = self.pipe.prepare_extra_step_kwargs(None, self.eta)

        with torch.no_grad():
            for p, t in enumerate(self.timesteps):
                step = self.pass_steps[p]
                if p == 0 or self.pass_steps[p - 1] != step:
                    while pending and pending[0][0] == step:
                        live.append(pending.pop(0)[1])
                    live = self._split(live, keys, step)
                self._evaluate(live, keys, step, t, extra)
            finished = live
        images, latents = self._decode(finished, seeds, len(runs))
        return EngineResult(
            seeds=seeds,
            runs=runs,
            images=images,
            latents=latents,
            model_evaluations=self.model_evaluations - evaluations_before,
            unet_calls=self.unet_calls - calls_before,
            independent_evaluations=independent,
            calibration_evaluations=self.calibration_evaluations - calibration_before,
        )

    def _split(self, live: list[_Branch], keys: list[list[StepKey]], step: int) -> list[_Branch]:
        """At the start of ``step``, split every branch whose runs disagree on this step's key."""
        out = []
        for branch in live:
            if self.config.cache_prefixes:
                self._cache_put((branch.seed,) + branch.prefix, branch.state)
            groups: dict[StepKey, list[int]] = {}
            for r in branch.runs:
                groups.setdefault(keys[r][step], []).append(r)
            for i, (key, members) in enumerate(groups.items()):
                # The first group carries on with the branch's own state; the others get copies.
                state = branch.state if i == 0 else branch.state.copy()
                out.append(_Branch(branch.seed, members, state, branch.prefix + (key,)))
        return out

    def _model_input(self, branch: _Branch, key: StepKey, t) -> torch.Tensor:
        latents = branch.state.latents
        model_input = latents if key[1] is None else torch.cat([latents] * 2)
        return branch.state.scheduler.scale_model_input(model_input, t)

    def _guide(self, noise_pred: torch.Tensor, scale: float | None) -> torch.Tensor:
        """The stock pipeline's CFG combination (and guidance rescale), written as it writes it; None: CFG off."""
        if scale is None:
            return noise_pred
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        guided = noise_pred_uncond + scale * (noise_pred_text - noise_pred_uncond)
        if self.guidance_rescale > 0.0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, noise_pred_text, guidance_rescale=self.guidance_rescale)
        return guided

    def _unet(self, model_input: torch.Tensor, t, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]} if self.sdxl else None
        self.unet_calls += 1
        return self.pipe.unet(
            model_input,
            t,
            encoder_hidden_states=cond["encoder_hidden_states"],
            timestep_cond=None,
            cross_attention_kwargs=self.cross_attention_kwargs,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    def _count(self, evaluations: int) -> None:
        self.model_evaluations += evaluations
        if self.on_evaluations is not None:
            self.on_evaluations(evaluations, self.model_evaluations)

    def _evaluate(self, live: list[_Branch], keys: list[list[StepKey]], step: int, t, extra: dict) -> None:
        step_keys = [keys[b.runs[0]][step] for b in live]
        inputs = [self._model_input(b, k, t) for b, k in zip(live, step_keys)]
        conds = [self._condition(k) for k in step_keys]
        preds: list[torch.Tensor | None] = [None] * len(live)
        batching = self.config.batching
        if batching is Batching.ALL and len(live) > 1:
            if self.on_branch_pass is not None:
                self.on_branch_pass(-1, [r for b in live for r in b.runs], step)
            preds = self._batched(list(range(len(live))), inputs, conds, t)
        elif batching is Batching.CALIBRATED and len(live) > 1:
            self._calibrated(live, inputs, conds, t, step, preds)
        else:
            for i in range(len(live)):
                preds[i] = self._single(live[i], inputs[i], conds[i], t, step)
        for branch, key, pred in zip(live, step_keys, preds):
            noise_pred = self._guide(pred, key[1])
            step_kwargs = dict(extra)
            if "generator" in step_kwargs:
                step_kwargs["generator"] = branch.state.generator
            state = branch.state
            state.latents = state.scheduler.step(noise_pred, t, state.latents, **step_kwargs, return_dict=False)[0]

    def _single(self, branch: _Branch, model_input: torch.Tensor, cond: dict[str, torch.Tensor], t, step: int) -> torch.Tensor:
        if self.on_branch_pass is not None:
            self.on_branch_pass(branch.seed, branch.runs, step)
        out = self._unet(model_input, t, cond)
        self._count(model_input.shape[0])
        return out

    def _batched(self, indices: list[int], inputs, conds, t, count: bool = True) -> list[torch.Tensor]:
        """One UNet call for the branches ``indices``; their outputs, split back per branch."""
        batched = {name: torch.cat([conds[i][name] for i in indices]) for name in conds[indices[0]]}
        out = self._unet(torch.cat([inputs[i] for i in indices]), t, batched)
        rows = [inputs[i].shape[0] for i in indices]
        if count:
            self._count(sum(rows))
        return list(out.split(rows))

    def _calibrated(self, live, inputs, conds, t, step: int, preds: list) -> None:
        """Batching.CALIBRATED: group branches of one input shape in checked group sizes."""
        by_shape: dict[tuple, list[int]] = {}
        for i, (x, cond) in enumerate(zip(inputs, conds)):
            signature = (tuple(x.shape), x.dtype, tuple((name, tuple(v.shape)) for name, v in cond.items()))
            by_shape.setdefault(signature, []).append(i)
        for signature, indices in by_shape.items():
            exact = self._exact_sizes.setdefault(signature, {1})
            done = 0
            candidate = 2 * max(exact)
            if signature not in self._refuted and candidate <= len(indices):
                # Check the next size on the real inputs; the per-branch outputs are the ones used.
                chunk = indices[:candidate]
                for i in chunk:
                    preds[i] = self._single(live[i], inputs[i], conds[i], t, step)
                together = self._batched(chunk, inputs, conds, t, count=False)
                self.calibration_evaluations += sum(inputs[i].shape[0] for i in chunk)
                if all(torch.equal(a, preds[i]) for a, i in zip(together, chunk)):
                    exact.add(candidate)
                else:
                    self._refuted.add(signature)
                done = candidate
            size = max(exact)
            while done < len(indices):
                chunk = indices[done : done + size]
                if len(chunk) in exact and len(chunk) > 1:
                    for i, out in zip(chunk, self._batched(chunk, inputs, conds, t)):
                        preds[i] = out
                else:
                    for i in chunk:
                        preds[i] = self._single(live[i], inputs[i], conds[i], t, step)
                done += len(chunk)

    # ---- decoding -------------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor, generator: torch.Generator | None = None):
        """Latents of one run to the requested ``output_type``, exactly as the stock pipeline's tail does."""
        pipe = self.pipe
        if self.output_type == "latent":
            return latents
        with torch.no_grad():
            if self.sdxl:
                image = self._decode_sdxl(latents)
                if getattr(pipe, "watermark", None) is not None:
                    image = pipe.watermark.apply_watermark(image)
                return pipe.image_processor.postprocess(image, output_type=self.output_type)
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            image, nsfw = pipe.run_safety_checker(image, self.device, latents.dtype)
            denormalize = [True] * image.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
            return pipe.image_processor.postprocess(image, output_type=self.output_type, do_denormalize=denormalize)

    def _decode_sdxl(self, latents: torch.Tensor) -> torch.Tensor:
        pipe = self.pipe
        upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
        if upcast:
            pipe.upcast_vae()
            latents = latents.to(next(iter(pipe.vae.post_quant_conv.parameters())).dtype)
        mean = getattr(pipe.vae.config, "latents_mean", None)
        std = getattr(pipe.vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / pipe.vae.config.scaling_factor + mean
        else:
            latents = latents / pipe.vae.config.scaling_factor
        image = pipe.vae.decode(latents.to(pipe.vae.device), return_dict=False)[0]
        if upcast:
            pipe.vae.to(dtype=torch.float16)
        return image

    def _decode(self, finished: list[_Branch], seeds: list[int], n_runs: int):
        images: dict[int, list[Any]] = {seed: [None] * n_runs for seed in seeds}
        latents: dict[int, list[Any]] = {seed: [None] * n_runs for seed in seeds}
        for branch in finished:
            # Runs still together at the end are one computation: decode once, share the output.
            out = self.decode(branch.state.latents, branch.state.generator)
            for r in branch.runs:
                images[branch.seed][r] = out
                latents[branch.seed][r] = branch.state.latents
        return images, latents


def guidance_kwargs(guidance_scale: float | None) -> dict[str, float]:
    """The ``guidance_scale`` keyword for an :class:`Engine`: None leaves it out, so the pipeline's own default applies (SDXL's is 5)."""
    return {} if guidance_scale is None else {"guidance_scale": guidance_scale}


def sample_runs(pipe, runs: Sequence[Run], seeds: Sequence[int], config: EngineConfig | None = None, **pipeline_kwargs):
    """Sample ``runs`` x ``seeds`` on ``pipe`` with shared prefixes (see :class:`Engine`)."""
    return Engine(pipe, config, **pipeline_kwargs).sample(runs, seeds)


def start_sweep_runs(negative_prompt: str, starts: Sequence[int], num_inference_steps: int, end: int | None = None) -> list[Run]:
    """The runs of a critical-step sweep: the no-negative run first, then one run per start."""
    runs = [Run()]
    for s in starts:
        runs.append(Run(negative_prompt=negative_prompt, negative_start=int(s), negative_end=end))
    return runs


__all__ = ["Batching", "Engine", "EngineConfig", "EngineResult", "Run", "guidance_kwargs", "sample_runs", "start_sweep_runs"]
