"""Sampling with a guidance rule other than plain CFG, and with a negative start found while sampling.

This module owns the loop for the rules of ``guidance.py`` that the stock pipeline cannot run
through a callback (three branches per model pass, a sigma window that drops the unconditional
pass, DNG's tracked posterior) and for ``negative_start="auto"`` (``auto.py`` decides the start
from signals of the running sample). It reuses an :class:`~negschedule.engine.Engine` for every
part of the stock loop - text encoding and the per-step negative texts (``schedule.py``'s timing,
A1111 prompt editing included), ``prepare_latents``, the UNet call and its evaluation count,
``scheduler.step``, ``vae.decode`` and postprocessing - and adds only the combination per step.

Layout of one model pass: the rows ``[empty prompt, negative, positive]`` for the three-branch
rules while the negative is active, ``[negative or empty, positive]`` for CFG, ``[positive]``
outside a sigma window. While a negative is off (before ``negative_start``) every rule is CFG
with the empty prompt, two evaluations, exactly what the timed negative does. Model evaluations
per latent per step (see :meth:`Guidance.evaluations_per_step`): CFG / timed 2; negative_scale,
perp_neg and dng 3 while the negative is active; sigma_window 2 inside, 1 outside; auto 3 while it
probes, 2 after (or 2 throughout with the detector signal, plus a VAE decode per probed step).

Batching three rows in one UNet call is not bit-identical to the stock pipeline's two-row call
(CPU kernels choose their blocking by shape, see engine.py), so these rules agree with
``generate()`` where they coincide only to ~1e-6; plain CFG keeps using the stock path.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .engine import Engine, Run
from .errors import InputError
from .generate import check_scale_with_negative, require_cfg
from .guidance import (
    THREE_BRANCH,
    Guidance,
    GuidanceRule,
    cfg,
    dng_posterior_update,
    dynamic_negative,
    negative_scale,
    perp_neg,
    sigma_of,
)


@dataclass
class GuidedResult:
    """Outputs per seed: ``images[seed]`` (the pipeline's output_type, a list of one batch), the
    evaluations spent, and for ``negative_start="auto"`` the start chosen and the per-step signals."""

    images: dict[int, Any]
    latents: dict[int, torch.Tensor]
    model_evaluations: int
    evaluations_per_seed: dict[int, int]
    starts: dict[int, int | None] = field(default_factory=dict)
    traces: dict[int, list[dict[str, float]]] = field(default_factory=dict)


class GuidedSampler:
    """Sample one prompt with ``guidance`` on ``pipe``; ``pipeline_kwargs`` as for :class:`Engine`.

    ``negative_start`` / ``negative_end`` gate the negative for every rule (int step, float
    fraction, as in ``generate()``); ``negative_start="auto"`` hands the start to ``auto``
    (an :class:`negschedule.auto.AutoStart`, default settings when None).

    ``callback_on_step_end`` is called after every pass as the stock pipeline calls it,
    ``(pipe, pass index, timestep, {"latents": ...})``, and may return new latents; only the latents
    are offered (the other tensors the stock loop shares do not exist here). When ``auto``'s
    look-ahead goes back to an earlier step, the passes from there are run, and reported, again.
    ``progress_bar``: draw the pipeline's own progress bar (``pipe.set_progress_bar_config`` applies).
    ``guidance_scale_with_negative``: CFG's scale at the steps where the negative acts (plain or timed
    CFG and "auto"; None: ``guidance_scale``), as in ``generate()``.
    """

    def __init__(
        self,
        pipe,
        guidance: Guidance | GuidanceRule | str | None = None,
        negative_prompt: str | None = None,
        negative_start: int | float | str | None = None,
        negative_end: int | float | None = None,
        auto=None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = ("latents",),
        progress_bar: bool = False,
        guidance_scale_with_negative: float | None = None,
        **pipeline_kwargs: Any,
    ):
        self.guidance = Guidance.of(guidance)
        self.callback, self.callback_inputs = _check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self.progress_bar = progress_bar
        self._bar = None
        self.engine = engine = Engine(pipe, **pipeline_kwargs)
        rule = self.guidance.rule
        self.auto = None
        from .auto import AutoStart

        if isinstance(negative_start, AutoStart):
            auto, negative_start = negative_start, "auto"
        if isinstance(negative_start, str):
            if negative_start.strip().lower() != "auto":
                raise InputError("negative_start", negative_start, 'a step, a fraction or "auto"')
            from .auto import AutoStart

            if rule not in (GuidanceRule.CFG, GuidanceRule.TIMED):
                raise InputError("negative_start", negative_start, f'"auto" times CFG\'s negative; not combined with guidance={rule.value}')
            self.auto = auto if auto is not None else AutoStart()
            negative_start = None
            if negative_end is not None:
                from .schedule import resolve_step

                if resolve_step(negative_end, engine.steps, "negative_end") < engine.steps:
                    # The automatic start runs the negative to the last step; an earlier end would be ignored.
                    raise InputError("negative_end", negative_end, 'not combined with negative_start="auto" (the negative runs to the last step)')
        if negative_prompt is None and (rule in THREE_BRANCH or self.auto is not None):
            raise InputError("negative_prompt", None, f"guidance={rule.value} needs a negative prompt")
        if negative_prompt is not None:
            require_cfg(engine.guidance_scale)
        scale_on = check_scale_with_negative(guidance_scale_with_negative)
        if scale_on is not None:
            if negative_prompt is None:
                raise InputError("guidance_scale_with_negative", scale_on, "needs a negative_prompt to act with")
            if rule not in (GuidanceRule.CFG, GuidanceRule.TIMED):
                raise InputError("guidance_scale_with_negative", scale_on, f"scales CFG's negative; not combined with guidance={rule.value}")
        # CFG's scale at the steps where the negative acts (the look-ahead of "auto" previews with it too).
        self.scale_on = engine.guidance_scale if scale_on is None else scale_on
        if self.auto is not None and engine.batch * engine.num_images_per_prompt != 1:
            raise InputError("prompt", engine.prompt, 'negative_start="auto" samples one image per seed: give one prompt, one image per seed')
        self.negative_prompt = negative_prompt
        if self.auto is not None:
            self.auto = self.auto.resolve(engine.pipe, negative_prompt)  # the default signal, made concrete for this model
        off = engine.step_keys(Run())
        # The negative's per-step keys; with "auto" the keys of a negative from step 0 (the start is decided later).
        run = Run(negative_prompt=negative_prompt, negative_start=negative_start, negative_end=negative_end)
        self.keys = engine.step_keys(run) if negative_prompt is not None else off
        self.off_key = off[0]
        # The negative's key where it is active (what "auto" switches to); A1111 editing may leave it off at step 0.
        self.negative_key = None
        if negative_prompt is not None:
            self.negative_key = next((k for k in engine.step_keys(Run(negative_prompt=negative_prompt)) if any(x is not None for x in k[0])), None)
            if self.negative_key is None:
                raise InputError("negative_prompt", negative_prompt, "is empty at every step")
        sched = engine._template
        self.alphas_cumprod = getattr(sched, "alphas_cumprod", None)
        if self.alphas_cumprod is None and (rule in (GuidanceRule.SIGMA_WINDOW, GuidanceRule.DNG) or self.auto is not None):
            raise InputError("scheduler", type(sched).__name__, f"has no alphas_cumprod, which guidance={rule.value} needs for sigma")
        # Variance-exploding latents (Euler, LMS, ...) carry x0 + sigma eps; DNG and x0 need the VP form.
        self.ve = float(getattr(sched, "init_noise_sigma", 1.0)) > 1.0
        self.prediction_type = getattr(sched.config, "prediction_type", "epsilon")

    # ---- per-step helpers -----------------------------------------------------------------------

    def alpha_bar(self, t) -> float:
        return float(self.alphas_cumprod[int(round(float(t)))])

    def _vp(self, latents: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        return latents * math.sqrt(alpha_bar) if self.ve else latents

    def x0(self, latents: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """The predicted clean latent ``(x - sqrt(1 - a) eps) / sqrt(a)`` (VP form; v-prediction handled)."""
        a = self.alpha_bar(t)
        return self._clean_and_noise(self._vp(latents, a), eps, a)[0]

    def _clean_and_noise(self, xv: torch.Tensor, out: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean latent and the noise that the model output ``out`` says make up the VP latent ``xv``."""
        if self.prediction_type == "v_prediction":
            return math.sqrt(a) * xv - math.sqrt(1 - a) * out, math.sqrt(1 - a) * xv + math.sqrt(a) * out
        return (xv - math.sqrt(1 - a) * out) / math.sqrt(a), out

    def _rows(self, conds: list[dict[str, torch.Tensor]], take: list[str]) -> dict[str, torch.Tensor]:
        """Stack the wanted row blocks ("neg" = first half, "pos" = second half of a CFG conditioning)."""
        rows = self.engine.batch * self.engine.num_images_per_prompt
        out: dict[str, torch.Tensor] = {}
        for name in conds[0]:
            parts = [c[name][:rows] if which == "neg" else c[name][rows:] for c, which in zip(conds, take)]
            shapes = {tuple(p.shape[1:]) for p in parts}
            if len(shapes) != 1:
                raise InputError("negative_prompt", self.negative_prompt, "encodes to another length than the empty prompt (A1111 weights / long prompts); use guidance=cfg")
            out[name] = torch.cat(parts)
        return out

    def _pass(self, latents: torch.Tensor, scheduler, t, cond: dict[str, torch.Tensor], k: int) -> list[torch.Tensor]:
        """One UNet call on ``k`` copies of the latents; the ``k`` predictions."""
        engine = self.engine
        model_input = scheduler.scale_model_input(torch.cat([latents] * k) if k > 1 else latents, t)
        out = engine._unet(model_input, t, cond)
        engine._count(model_input.shape[0])
        return list(out.chunk(k)) if k > 1 else [out]

    def _rescale(self, guided: torch.Tensor, eps_pos: torch.Tensor) -> torch.Tensor:
        if self.engine.guidance_rescale > 0.0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            return rescale_noise_cfg(guided, eps_pos, guidance_rescale=self.engine.guidance_rescale)
        return guided

    # ---- sampling -------------------------------------------------------------------------------

    def sample(self, seeds: Sequence[int]) -> GuidedResult:
        seeds = [int(s) for s in seeds]
        if not seeds or len(set(seeds)) != len(seeds):
            raise InputError("seeds", seeds, "give at least one seed, each once")
        from .auto import Signal

        engine = self.engine
        images, latents, per_seed, starts, traces = {}, {}, {}, {}, {}
        before_all = engine.model_evaluations
        if self.auto is not None and self.auto.signal is Signal.ROLLOUT:
            # The look-ahead search: one start per seed, or one shared by the prompt's seeds.
            for group in [seeds] if self.auto.per_prompt else [[seed] for seed in seeds]:
                states, start, group_traces, spent = self._rollout(group)
                for seed, state, trace, n in zip(group, states, group_traces, spent):
                    latents[seed], images[seed] = state.latents, engine.decode(state.latents, state.generator)
                    per_seed[seed], starts[seed], traces[seed] = n, start, trace
            return GuidedResult(images, latents, engine.model_evaluations - before_all, per_seed, starts, traces)
        for seed in seeds:
            before = engine.model_evaluations
            state, start, trace = self._sample_one(seed)
            latents[seed] = state.latents
            images[seed] = engine.decode(state.latents, state.generator)
            per_seed[seed] = engine.model_evaluations - before
            starts[seed] = start
            traces[seed] = trace
        return GuidedResult(images, latents, engine.model_evaluations - before_all, per_seed, starts, traces)

    def _sample_one(self, seed: int):
        engine = self.engine
        state = engine._root(seed, self.keys[0][2])
        extra = engine.pipe.prepare_extra_step_kwargs(None, engine.eta)
        rows = engine.batch * engine.num_images_per_prompt
        posterior = torch.full((rows,), self.guidance.prior, dtype=torch.float64)
        decider = self.auto.decider(self, seed) if self.auto is not None else None
        cond_off = engine._condition(self.off_key)
        self._bar = engine.pipe.progress_bar(total=len(engine.timesteps)) if self.progress_bar else None
        try:
            return self._loop(state, decider, posterior, extra, cond_off)
        finally:
            if decider is not None:
                decider.close()
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def _end_of_pass(self, p: int, t, states: list) -> None:
        """After pass ``p``: the progress bar, then the user's callback (which may replace the latents).

        Images sampled together (a per-prompt start) reach the callback as one batch, as a stock
        pipeline's ``num_images_per_prompt`` images do.
        """
        if self._bar is not None:
            self._bar.n = p + 1  # not update(): a rollout that goes back runs passes again
            self._bar.refresh()
        if self.callback is not None:
            tensors = {"latents": torch.cat([s.latents for s in states])} if "latents" in self.callback_inputs else {}
            returned = self.callback(self.engine.pipe, p, t, tensors) or {}
            if "latents" in returned:
                for state, part in zip(states, returned["latents"].split([s.latents.shape[0] for s in states])):
                    state.latents = part

    def _loop(self, state, decider, posterior, extra, cond_off):
        engine = self.engine
        g = self.guidance
        rule = g.rule
        w = engine.guidance_scale
        n_scale = g.resolved_negative_scale(w)
        timesteps = engine.timesteps
        start: int | None = None
        trace: list[dict[str, float]] = []
        with torch.no_grad():
            for p, t in enumerate(timesteps):
                step = engine.pass_steps[p]
                x = state.latents
                key = self.keys[step]
                active = any(text is not None for text in key[0])
                if decider is not None:
                    eps, start = self._auto_pass(decider, state.scheduler, x, t, step, start, trace)
                elif rule in THREE_BRANCH and active:
                    cond = self._rows([cond_off, engine._condition(key), cond_off], ["neg", "neg", "pos"])
                    eps_u, eps_neg, eps_pos = self._pass(x, state.scheduler, t, cond, 3)
                    if rule is GuidanceRule.NEGATIVE_SCALE:
                        eps = negative_scale(eps_u, eps_pos, eps_neg, w, n_scale)
                    elif rule is GuidanceRule.PERP_NEG:
                        eps = perp_neg(eps_u, eps_pos, eps_neg, w, n_scale)
                    else:
                        eps = dynamic_negative(eps_u, eps_pos, eps_neg, w, n_scale, posterior)
                    eps = self._rescale(eps, eps_pos)
                elif not g.guides_at(sigma_of(self.alpha_bar(t)), step):
                    (eps,) = self._pass(x, state.scheduler, t, self._rows([engine._condition(key)], ["pos"]), 1)
                else:
                    eps_first, eps_pos = self._pass(x, state.scheduler, t, engine._condition(key if active else self.off_key), 2)
                    eps = self._rescale(cfg(eps_first, eps_pos, self.scale_on if active else w), eps_pos)
                step_kwargs = dict(extra)
                if "generator" in step_kwargs:
                    step_kwargs["generator"] = state.generator
                new = state.scheduler.step(eps, t, x, **step_kwargs, return_dict=False)[0]
                if rule is GuidanceRule.DNG and active:
                    a = self.alpha_bar(t)
                    a_next = self.alpha_bar(timesteps[p + 1]) if p + 1 < len(timesteps) and float(timesteps[p + 1]) < float(t) else 1.0
                    if a_next > a:
                        posterior = dng_posterior_update(
                            posterior, self._vp(new, a_next).double(), self._vp(x, a).double(), eps_u.double(), eps_neg.double(),
                            a, a_next, g.temperature, g.offset, g.p_min, g.p_max,
                        )
                    trace.append({"step": step, "posterior": float(posterior.mean())})
                state.latents = new
                self._end_of_pass(p, t, [state])
        return state, start, trace

    def _auto_pass(self, decider, scheduler, x, t, step: int, start: int | None, trace: list):
        """One pass under ``negative_start="auto"``: probe until the decider plans the start, then follow the plan.

        A signal read at step ``s`` from the negative's own prediction can act at ``s`` (that
        prediction is at hand); one read from the x0 preview of the empty-prompt CFG can act from
        ``s + 1``. ``AutoStart.delay`` adds steps; the start never passes ``max_start``.
        """
        engine = self.engine
        w = engine.guidance_scale
        cond_off = engine._condition(self.off_key)
        cond_neg = engine._condition(self.negative_key)
        if start is None and step >= decider.latest:
            start = decider.latest  # the latest start allowed: no more probing
        if start is not None:
            on = step >= start
            eps_first, eps_pos = self._pass(x, scheduler, t, cond_neg if on else cond_off, 2)
            return self._rescale(cfg(eps_first, eps_pos, self.scale_on if on else w), eps_pos), start
        if decider.needs_negative:
            cond = self._rows([cond_off, cond_neg, cond_off], ["neg", "neg", "pos"])
            decider.before_probe(step)
            try:
                eps_u, eps_neg, eps_pos = self._pass(x, scheduler, t, cond, 3)
            finally:
                decider.after_probe()
        else:
            eps_u, eps_pos = self._pass(x, scheduler, t, cond_off, 2)
            eps_neg = None
        signals = decider.signals(x, t, step, eps_u, eps_pos, eps_neg)
        trace.append({"step": step, **signals})
        if decider.decide(step, signals):
            start = min(decider.latest, step + (0 if eps_neg is not None else 1) + decider.settings.delay)
            if start == step:
                return self._rescale(cfg(eps_neg, eps_pos, self.scale_on), eps_pos), start
        return self._rescale(cfg(eps_u, eps_pos, w), eps_pos), start

    # ---- negative_start="auto" with look-ahead rollouts --------------------------------------------

    def _lookahead(self, x, p: int, eps_pos: torch.Tensor, jumps: int, negative: bool = True) -> torch.Tensor:
        """The clean latent reached from the latents ``x`` of pass ``p`` with the negative on from now:
        ``jumps`` DDIM jumps (eta 0) over the remaining timesteps. The first jump reuses ``eps_pos``.
        ``negative=False``: the same look-ahead with the negative off (a control). The negative's
        look-ahead guides with the scale the sample will use once it starts (``scale_on``)."""
        engine = self.engine
        w = self.scale_on if negative else engine.guidance_scale
        timesteps = engine.timesteps
        cond_neg = engine._condition(self.negative_key if negative else self.off_key)
        only_neg = self._rows([cond_neg], ["neg"])
        remaining = len(timesteps) - p
        marks = sorted({p + (j * remaining) // jumps for j in range(jumps)})
        a = self.alpha_bar(timesteps[p])
        xv = self._vp(x, a)  # the UNet sees VP latents (what scale_model_input gives for VE schedulers)
        for j, q in enumerate(marks):
            t = timesteps[q]
            a = self.alpha_bar(t)
            if j == 0:
                eps_neg = engine._unet(xv, t, only_neg)
                engine._count(xv.shape[0])
                pos = eps_pos
            else:
                eps_neg, pos = engine._unet(torch.cat([xv, xv]), t, cond_neg).chunk(2)
                engine._count(2 * xv.shape[0])
            x0, eps = self._clean_and_noise(xv, cfg(eps_neg, pos, w), a)
            if j + 1 < len(marks):
                a_next = self.alpha_bar(timesteps[marks[j + 1]])
                xv = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
        return x0

    def _rollout(self, seeds: list[int]):
        """``auto`` with ``Signal.ROLLOUT`` for ``seeds`` sampled together; one seed is the per-image rule.

        The seeds advance in lock step with the negative off, each keeping a snapshot of every
        pass; at the probed steps each asks a look-ahead whether a negative starting there still
        removes the concept (its own search, ``AutoStart.decision``). Once ``auto.pooled_start``
        knows the start - the earliest any search settles on, once none can settle earlier; for
        one seed, its own - every image goes back to its snapshot of that step if it is behind, and
        samples on with the negative from it. Each image's passes and probes are its own UNet
        calls, so every image equals the one a fixed start gives it. Returns the states, the start,
        the per-seed traces and evaluations.
        """
        from .auto import pooled_start

        engine = self.engine
        decider = self.auto.decider(self, seeds[0])
        decide = self.auto.decision  # the search's next move (AutoStart.choice)
        w = engine.guidance_scale
        timesteps = engine.timesteps
        cond_off, cond_neg = engine._condition(self.off_key), engine._condition(self.negative_key)
        extra = engine.pipe.prepare_extra_step_kwargs(None, engine.eta)
        states = [engine._root(seed, self.keys[0][2]) for seed in seeds]
        snapshots: list[dict[int, tuple]] = [{} for _ in seeds]  # per image: step -> (pass, latents, scheduler, generator state, eps_pos)
        answers: list[dict[int, bool]] = [{} for _ in seeds]
        traces: list[list[dict[str, float]]] = [[] for _ in seeds]
        spent = [0] * len(seeds)
        start: int | None = None
        self._bar = engine.pipe.progress_bar(total=len(timesteps)) if self.progress_bar else None
        p = 0
        try:
            with torch.no_grad():
                while p < len(timesteps):
                    t = timesteps[p]
                    step = engine.pass_steps[p]
                    probing = start is None and (p == 0 or engine.pass_steps[p - 1] != step)  # a step's first pass
                    on = start is not None and step >= start
                    guided = []
                    for i, state in enumerate(states):
                        before = engine.model_evaluations
                        x = state.latents
                        eps_first, eps_pos = self._pass(x, state.scheduler, t, cond_neg if on else cond_off, 2)
                        guided.append(self._rescale(cfg(eps_first, eps_pos, self.scale_on if on else w), eps_pos))
                        if probing:
                            snapshots[i][step] = (p, x, copy.deepcopy(state.scheduler), state.generator.get_state(), eps_pos)
                            while True:  # this image's search, as far as the steps sampled so far allow
                                move, target = decide(decider.probes, decider.latest, answers[i])
                                if move == "start" or target > step:
                                    break
                                q, xq, _, _, eps_q = snapshots[i][target]
                                removed = not decider.detector(decider.decode(self._lookahead(xq, q, eps_q, decider.settings.jumps)))
                                answers[i][target] = removed
                                traces[i].append({"step": target, "rollout_removed": float(removed)})
                        spent[i] += engine.model_evaluations - before
                    if probing:
                        start = pooled_start(decider.probes, decider.latest, answers, decide)
                        if start is not None and start <= step:  # behind: go back to the start's snapshots
                            for i, state in enumerate(states):
                                q, xq, scheduler, gen_state, _ = snapshots[i][start]
                                state.latents, state.scheduler = xq, copy.deepcopy(scheduler)
                                state.generator.set_state(gen_state)
                            p = q
                            snapshots = [{} for _ in seeds]
                            continue
                    for state, eps in zip(states, guided):
                        step_kwargs = dict(extra)
                        if "generator" in step_kwargs:
                            step_kwargs["generator"] = state.generator
                        state.latents = state.scheduler.step(eps, t, state.latents, **step_kwargs, return_dict=False)[0]
                    self._end_of_pass(p, t, states)
                    p += 1
        finally:
            decider.close()
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        return states, start, traces, spent


def _check_callback(callback, tensor_inputs) -> tuple[Any, tuple[str, ...]]:
    """The callback and the tensors it asks for; the engine's loop offers the latents only."""
    if callback is None:
        return None, ()
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        tensor_inputs = callback.tensor_inputs
    elif not callable(callback):
        raise InputError("callback_on_step_end", type(callback).__name__, "must be callable (pipe, step_index, timestep, callback_kwargs)")
    inputs = tuple(tensor_inputs or ())
    other = [name for name in inputs if name != "latents"]
    if other:
        raise InputError("callback_on_step_end_tensor_inputs", other, "only 'latents' with this guidance or negative_start='auto' (the engine's loop)")
    return callback, inputs


def sample_guided(pipe, guidance, seeds: Sequence[int], negative_prompt: str | None = None, negative_start=None, negative_end=None, auto=None, **pipeline_kwargs) -> GuidedResult:
    """Sample ``seeds`` of one prompt with ``guidance`` (see :class:`GuidedSampler`)."""
    return GuidedSampler(pipe, guidance, negative_prompt, negative_start, negative_end, auto, **pipeline_kwargs).sample(seeds)


def generate_guided(pipe, guidance=None, negative_start=None, negative_end=None, generator: torch.Generator | None = None, seed: int | None = None, **kwargs):
    """``generate()``'s route for non-CFG rules and ``negative_start="auto"``: the pipeline's own output type.

    The engine draws its latents from ``torch.Generator().manual_seed(seed)``; a ``generator``
    argument is read for its initial seed, so pass a freshly seeded generator (as ``generate()``
    users do).
    """
    if generator is not None:
        if isinstance(generator, list):
            raise InputError("generator", "<list>", "one generator per call with this guidance")
        seed = generator.initial_seed()
    seed = 0 if seed is None else int(seed)
    return_dict = kwargs.pop("return_dict", True)
    negative_prompt = kwargs.pop("negative_prompt", None)
    kwargs.setdefault("progress_bar", True)  # as the stock pipeline draws one
    result = sample_guided(pipe, guidance, [seed], negative_prompt, negative_start, negative_end, **kwargs)
    images = result.images[seed]
    if not return_dict:
        return (images, None)
    from .conditioning import is_sdxl

    if is_sdxl(pipe):
        from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

        out = StableDiffusionXLPipelineOutput(images=images)
    else:
        from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

        out = StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)
    # What the sampler did, for callers that want it (the start "auto" chose, evaluations spent).
    out.negative_start = result.starts[seed]
    out.model_evaluations = result.model_evaluations
    return out


__all__ = ["GuidedResult", "GuidedSampler", "generate_guided", "sample_guided"]
