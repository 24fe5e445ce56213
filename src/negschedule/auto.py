"""``negative_start="auto"``: decide, while sampling, the step from which the negative prompt acts.

This module owns the decision rule and its signals. Ban et al. (arXiv:2406.02965) explain the
critical step: a negative prompt can only neutralise its concept once the positive prompt has
started to draw it; before that, it pushes the image into another composition (or draws the very
thing, "reverse activation"). So the negative should start when the concept shows up in the running
sample. Signals available during sampling (:class:`Signal`):

* ``DETECTOR`` - the predicted clean image ``x0`` of the current step (from the CFG prediction
  with the empty prompt), decoded by the VAE and shown to a concept detector (the toy world's exact
  detector by default, any ``image -> bool`` callable otherwise): start as soon as the concept is
  seen. No extra model evaluation; one VAE decode per probed step.
* ``NEGATIVE_PREVIEW`` - the same detector on the x0 predicted with the negative acting (CFG with
  the negative prompt in place of the empty one, the step's own predictions): while the negative
  still hides the concept from the clean-image estimate it can still remove it later, so wait;
  start once even the negative-guided estimate shows it. One extra evaluation per probed step.
* ``ATTENTION`` - the cross-attention of the negative prompt's tokens on the current latent, in
  the negative's own pass (``attention.py``'s capture): the share of it on the top 10 % of the
  latent's pixels, high once the negative "sees" a thing it names (Ban et al.'s delay). Needs the
  negative's prediction, one extra evaluation per probed step.
* ``ALIGNMENT`` - the cosine between the negative's and the positive's guidance directions,
  ``cos(eps_neg - eps_u, eps_pos - eps_u)``: high once the prompt's prediction moves where the
  negative's does. Needs the negative's prediction, one extra evaluation per probed step.

* ``ROLLOUT`` - asks the oracle's own question, "would a negative starting here still remove the
  concept?", with a look-ahead of a few DDIM jumps with the negative on, read by the detector; it
  probes forward (:func:`rollout_decision`) and, when the start it picks is behind, goes back to
  that step's snapshot. Costs ``1 + 2 (jumps - 1)`` per probe plus the replayed steps
  (:func:`rollout_extra_bound`; 1.3x at 20 steps, 2 jumps). Its blurry look-ahead reads "removed"
  too often on the toy model (docs/guidance.md), but shared by a prompt's images it follows the
  per-prompt oracle best of the rules measured, so it is the default where a detector can read
  the negative (:meth:`AutoStart.resolve`). With ``per_prompt=True`` the images of a prompt share
  one start: the earliest that any of their searches settles on (:func:`pooled_start`), which is
  how the best start of a prompt relates to its images' own. ``choice="verified"`` starts at the last probe whose look-ahead removed the
  concept (:func:`rollout_verified`) instead of the midpoint between it and the first that did
  not: more removal, less structure, a longer replay (1.4x at worst).

Whatever the signal, the negative starts at ``max_start`` (a fraction of the steps) at the latest,
which bounds the cost: probing with ``ALIGNMENT`` or ``ATTENTION`` costs 3 evaluations per step instead of 2 for at
most ``max_start`` of the steps, so at most ``1 + max_start / 2`` times a plain generation (1.25x
at the default 0.5). Which signal is the default (the rollout shared by a prompt's images where a
detector reads the negative, the attention rule elsewhere), and the threshold, come from the study
in ``docs/guidance.md`` (toy world, held-out prompts).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from .errors import InputError
from .guidance import cfg


class Signal(enum.Enum):
    """What ``auto`` watches to start the negative."""

    DETECTOR = "detector"  # a concept detector on the decoded x0 prediction (no extra evaluation)
    ALIGNMENT = "alignment"  # cos(eps_neg - eps_u, eps_pos - eps_u) (one extra evaluation per probed step)
    NEGATIVE_PREVIEW = "negative_preview"  # the detector on the x0 of the negative-guided prediction (one extra evaluation)
    ATTENTION = "attention"  # how concentrated the negative tokens' cross-attention is (one extra evaluation)
    ROLLOUT = "rollout"  # a few-jump look-ahead with the negative on, read by a detector; searches, then backtracks


@dataclass(frozen=True)
class AutoStart:
    """How ``negative_start="auto"`` decides; defaults are the best of the study in docs/guidance.md."""

    # None: the best rule this model and negative allow (:meth:`resolve`, docs/guidance.md): the ROLLOUT look-ahead,
    # shared by a prompt's images, where a detector can read the negative - ``detector``, or the toy world's on a
    # toy-world model for a negative it has words for - and ATTENTION, which needs none, everywhere else.
    signal: Signal | None = None
    # ALIGNMENT: start once the cosine reaches this.
    threshold: float = 0.5
    # ATTENTION: start once this share of the negative tokens' attention falls on the top 10% of the latent's pixels.
    # 0.16 is the study's best on the first toy model (docs/guidance.md; on the shipped one it never fired
    # for the bench's "moon" prompts); uniform attention gives 0.10.
    attention_threshold: float = 0.16
    # Never before this step (the first steps' x0 is a blur that no detector can read).
    min_step: int = 1
    # Start here at the latest (fraction of the steps): bounds the cost and acts on late concepts.
    max_start: float = 0.5
    # The signal must hold on this many consecutive probed steps (a concept that flickers in the
    # early, blurry previews is not yet drawn).
    run: int = 1
    # Steps between the signal and the start (the negative can still remove a concept a few steps
    # after it first shows, and every step later keeps more of the structure).
    delay: int = 0
    # DETECTOR: image -> bool; None = the toy world's exact detector for the negative prompt.
    detector: Callable[[Any], bool] | None = None
    # ROLLOUT: the probed starts, as fractions of the latest start (step 0 is probed only when the first fails).
    probes: tuple[float, ...] = (0.3, 0.7)
    # ROLLOUT: DDIM jumps (eta 0) of a look-ahead from the probed step to the clean image; each costs
    # 2 evaluations, but the first reuses the step's own positive prediction.
    jumps: int = 2
    # ROLLOUT: one start per prompt instead of per image. The images sampled together (the seeds of
    # one ``sample_guided`` call) advance in lock step, each runs its own search, and all of them
    # take the earliest start any search settles on, as soon as no other can settle earlier: a
    # prompt's best start is, to within a step, the earliest that any of its images needs
    # (docs/guidance.md, "Per image or per prompt"). An image may then replay more steps than its
    # own search would have (from the shared start), so ``cost_bound`` is the per-image bound; on the
    # toy-world bench it cost 1.24-1.26x on average.
    per_prompt: bool = False
    # ROLLOUT: where the search starts once a probe fails: "midpoint" (between the last probe that
    # removes and the first that does not: nearest the critical step on average) or "verified" (the
    # last probe that removes: a start the look-ahead checked, so more removal for a little less
    # structure; docs/guidance.md, "Verified starts") or "gate" (one look-ahead from step 0: start at 0
    # if it removes, else at the latest start; removal first, the critical step not sought;
    # docs/guidance.md, "A removal-first gate").
    choice: str = "midpoint"

    def __post_init__(self):
        if self.signal is not None and not isinstance(self.signal, Signal):
            try:
                object.__setattr__(self, "signal", Signal(str(self.signal).lower()))
            except ValueError:
                raise InputError("signal", self.signal, f"choose one of {', '.join(s.value for s in Signal)}") from None
        if not 0.0 <= self.max_start <= 1.0:
            raise InputError("max_start", self.max_start, "a fraction of the steps, in [0, 1]")
        if self.min_step < 0:
            raise InputError("min_step", self.min_step, "must be >= 0")
        if self.run < 1:
            raise InputError("run", self.run, "must be >= 1")
        if self.delay < 0:
            raise InputError("delay", self.delay, "must be >= 0")
        if not self.probes or any(not 0.0 < f <= 1.0 for f in self.probes):
            raise InputError("probes", self.probes, "fractions of the latest start, each in (0, 1]")
        if self.jumps < 1:
            raise InputError("jumps", self.jumps, "must be >= 1")
        if self.choice not in CHOICES:
            raise InputError("choice", self.choice, f"choose one of {', '.join(CHOICES)}")
        # Explicitly: with the default signal these would act on some models and not on others.
        named = "the default" if self.signal is None else f"'{self.signal.value}'"
        if self.choice != "midpoint" and self.signal is not Signal.ROLLOUT:
            raise InputError("choice", self.choice, f"only acts with signal='rollout', not {named}")
        if self.per_prompt and self.signal is not Signal.ROLLOUT:
            raise InputError("per_prompt", self.per_prompt, f"is implemented for signal='rollout', not {named}")

    @property
    def decision(self) -> "Decision":
        """The ROLLOUT search's next move for ``choice`` (:func:`rollout_decision`, :func:`rollout_verified`, :func:`rollout_gate`)."""
        return CHOICES[self.choice]

    @property
    def reads_detector(self) -> bool:
        """Whether the signal asks a concept detector (``detector``, the toy world's when None)."""
        return self.signal in (Signal.DETECTOR, Signal.NEGATIVE_PREVIEW, Signal.ROLLOUT)

    def resolve(self, pipe, negative_prompt) -> "AutoStart":
        """These settings for sampling ``negative_prompt`` on ``pipe``: the default signal made concrete.

        On the toy world the look-ahead shared by a prompt's images is the rule that follows the
        per-prompt oracle best (docs/guidance.md, "Per image or per prompt"), but it reads a concept
        detector; without one, the attention rule, the best measured that needs none.
        """
        if self.signal is not None:
            return self
        if self.detector is not None or toy_detector_reads(pipe, negative_prompt):
            return replace(self, signal=Signal.ROLLOUT, per_prompt=True)
        return replace(self, signal=Signal.ATTENTION)

    def cost_bound(self, steps: int | None = None) -> float:
        """The most this costs, in units of a plain generation's model evaluations (``steps``: for ROLLOUT).

        For the default signal, the larger of the two rules it may become."""
        if self.signal is None:
            return max(replace(self, signal=Signal.ATTENTION).cost_bound(),
                       replace(self, signal=Signal.ROLLOUT, per_prompt=True).cost_bound(steps))
        if self.signal is Signal.ROLLOUT:
            if steps is None:
                raise InputError("steps", steps, "the rollout's cost bound depends on the number of steps")
            latest = int(self.max_start * steps)
            return 1.0 + rollout_extra_bound(probe_steps(self.probes, latest), latest, self.jumps, self.decision) / (2 * steps)
        return 1.0 + self.max_start / 2 if self.signal is not Signal.DETECTOR else 1.0

    def decider(self, sampler, seed: int) -> "_Decider":
        return _Decider(self, sampler)


def toy_detector_reads(pipe, negative_prompt) -> bool:
    """Whether the toy world's exact detector can judge ``negative_prompt`` on ``pipe``'s pictures:
    a toy-world model (its tokenizer is the toy world's) and a negative the world has words for."""
    from .toyworld.tokenizer import is_toyworld_tokenizer

    if not isinstance(negative_prompt, str) or not is_toyworld_tokenizer(getattr(pipe, "tokenizer", None)):
        return False
    from .experiments.detectors import ToyDetector

    try:
        ToyDetector(negative_prompt)
    except InputError:
        return False
    return True


def probe_steps(fractions: tuple[float, ...], latest: int) -> tuple[int, ...]:
    """The steps a ROLLOUT search probes: ``round(f * latest)``, at least 1, ascending, distinct."""
    return tuple(sorted({max(1, round(f * latest)) for f in fractions})) if latest >= 1 else ()


def _rollout_move(probes: tuple[int, ...], latest: int, answers: dict[int, bool], midpoint: bool) -> tuple[str, int]:
    """The ROLLOUT search's walk, shared by both choices; ``midpoint`` says where it starts between probes."""
    last_ok: int | None = None
    for q in probes:
        if q not in answers:
            return ("probe", q)
        if not answers[q]:
            if last_ok is not None:
                return ("start", (last_ok + q) // 2 if midpoint else last_ok)
            if 0 not in answers:
                return ("probe", 0)
            if not answers[0]:
                return ("start", latest)  # no start removes it: keep the most structure
            return ("start", q // 2 if midpoint else 0)
        last_ok = q
    if last_ok is None:  # nothing to probe (latest 0)
        return ("start", latest)
    return ("start", (last_ok + latest + 1) // 2 if midpoint else last_ok)


def rollout_decision(probes: tuple[int, ...], latest: int, answers: dict[int, bool]) -> tuple[str, int]:
    """The next move of the ROLLOUT search: ``("probe", step)`` or ``("start", step)``.

    ``answers[q]`` says whether a negative starting at step ``q`` removes the concept (a look-ahead
    read by the detector). The search assumes what Ban et al. observed: a negative removes the
    concept when it starts early enough, up to a critical step. Probes go forward in time; at the
    first one that fails, the critical step lies between it and the last that succeeded, and the
    start is their midpoint (the middle of the interval is within one step of most of it). If
    the first probe fails, step 0 decides between "early" (midpoint of 0 and the first probe) and
    "no start removes it" (then the latest start, which keeps the most structure). If every probe
    succeeds, the start is the midpoint of the last probe and ``latest``.
    """
    return _rollout_move(probes, latest, answers, midpoint=True)


def rollout_verified(probes: tuple[int, ...], latest: int, answers: dict[int, bool]) -> tuple[str, int]:
    """The next move of a ROLLOUT search that starts only where a look-ahead said "removed".

    The same walk as :func:`rollout_decision` (forward, to the first probe that fails; step 0 when
    the first fails), but it starts at the last probe that succeeded instead of guessing between it
    and the failure: a start the look-ahead checked. Step 0 when only it removes; ``latest`` when
    nothing does (no start removes it, so keep the most structure); the last probe when all do.
    """
    return _rollout_move(probes, latest, answers, midpoint=False)


def rollout_gate(probes: tuple[int, ...], latest: int, answers: dict[int, bool]) -> tuple[str, int]:
    """The next move of a ROLLOUT rule that asks one question: can the negative remove the concept at all?

    One look-ahead with the negative from step 0 (``probes`` are not used). If it says "removed",
    start at 0, the start that removes most often; if not, no start is likely to remove it, so
    start at ``latest``, where the negative disturbs the picture least. It does not look for the
    critical step: it trades that for removal at least that of a start at 0 where the look-ahead
    is right, at the price of one look-ahead (docs/guidance.md, "A removal-first gate").
    """
    if 0 not in answers:
        return ("probe", 0)
    return ("start", 0 if answers[0] else latest)


Decision = Callable[[tuple[int, ...], int, dict[int, bool]], tuple[str, int]]  # a ROLLOUT search's next move


def _search_with(probes: tuple[int, ...], latest: int, truth: dict[int, bool], decision: Decision = rollout_decision) -> tuple[int, dict[int, bool]]:
    """Run a ROLLOUT search to its end on the answers ``truth`` gives: its start, and the probes it asked."""
    asked: dict[int, bool] = {}
    while True:
        move, step = decision(probes, latest, asked)
        if move == "start":
            return step, asked
        asked[step] = truth[step]


def _answer_patterns(probes: tuple[int, ...], known: dict[int, bool]):
    """Every way the probes not answered in ``known`` (step 0 included) could still be answered."""
    pending = [q for q in sorted(set(probes) | {0}) if q not in known]
    for mask in range(2 ** len(pending)):
        yield {**known, **{q: bool(mask >> i & 1) for i, q in enumerate(pending)}}


def rollout_earliest(probes: tuple[int, ...], latest: int, answers: dict[int, bool], decision: Decision = rollout_decision) -> int:
    """The earliest start a ROLLOUT search can still settle on, given the answers it has so far."""
    return min(_search_with(probes, latest, truth, decision)[0] for truth in _answer_patterns(probes, answers))


def pooled_start(probes: tuple[int, ...], latest: int, answers: list[dict[int, bool]], decision: Decision = rollout_decision) -> int | None:
    """The start shared by images whose ROLLOUT searches have ``answers`` so far: the earliest start
    any of them settles on, once none can still settle earlier; None while that is open."""
    settled, earliest = [], []  # the starts searches chose; the earliest the others may still choose
    for known in answers:
        move, step = decision(probes, latest, known)
        if move == "start":
            settled.append(step)
        else:
            earliest.append(rollout_earliest(probes, latest, known, decision))
    if not settled:
        return None
    best = min(settled)
    return best if all(best <= e for e in earliest) else None


def rollout_extra_bound(probes: tuple[int, ...], latest: int, jumps: int, decision: Decision = rollout_decision) -> int:
    """The most model evaluations a ROLLOUT search adds to a plain generation, over every answer pattern.

    Each probe costs ``1 + 2 (jumps - 1)``; a start at or before the current step replays the
    steps from the start to the current one (2 evaluations each) with the negative on. Counted for
    one pass per step; a two-pass scheduler (Heun) doubles the replay and the plain generation alike.
    """
    worst = 0
    for truth in _answer_patterns(probes, {}):
        step, asked = _search_with(probes, latest, truth, decision)
        worst = max(worst, rollout_extra(len(asked), step, max(asked, default=0), jumps))
    return worst


def rollout_extra(probes_asked: int, start: int, now: int, jumps: int) -> int:
    """The model evaluations a ROLLOUT search added to one image: ``1 + 2 (jumps - 1)`` per probe, and
    2 per pass sampled again when the start (known at step ``now``) is at or before ``now``."""
    replay = (now - start + 1) * 2 if start <= now else 0
    return probes_asked * (1 + 2 * (jumps - 1)) + replay


def alignment(eps_u: torch.Tensor, eps_pos: torch.Tensor, eps_neg: torch.Tensor) -> float:
    """``cos(eps_neg - eps_u, eps_pos - eps_u)``, over all elements (one image)."""
    a = (eps_neg - eps_u).flatten().double()
    b = (eps_pos - eps_u).flatten().double()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else 0.0


class _Decider:
    """The per-image state of one ``auto`` decision."""

    def __init__(self, settings: AutoStart, sampler):
        self.settings = settings
        self.sampler = sampler
        self.steps = sampler.engine.steps
        self.latest = int(settings.max_start * self.steps)
        self.needs_negative = settings.signal not in (Signal.DETECTOR, Signal.ROLLOUT)
        self.probes = probe_steps(settings.probes, self.latest)
        self.streak = 0
        self.capture = None
        if settings.signal is Signal.ATTENTION:
            from .attention import CrossAttentionCapture

            pipe, engine = sampler.engine.pipe, sampler.engine
            ids = pipe.tokenizer(sampler.negative_prompt, truncation=True, max_length=pipe.tokenizer.model_max_length)["input_ids"]
            columns = list(range(1, len(ids) - 1))  # the negative's words: not BOS, not EOS
            latent_hw = (engine.height // pipe.vae_scale_factor, engine.width // pipe.vae_scale_factor)
            self.capture = CrossAttentionCapture(pipe.unet, columns, latent_hw).__enter__()
        self.detector = None
        if settings.reads_detector:
            self.detector = settings.detector
            if self.detector is None:
                from .experiments.detectors import ToyDetector

                self.detector = ToyDetector(sampler.negative_prompt)

    def before_probe(self, step: int) -> None:
        if self.capture is not None:
            self.capture.step = step

    def after_probe(self) -> None:
        if self.capture is not None:
            self.capture.step = None

    def close(self) -> None:
        """Give the UNet its own attention processors back."""
        if self.capture is not None:
            self.capture.__exit__(None, None, None)
            self.capture = None

    def _concentration(self, step: int) -> float | None:
        sink = self.capture.sink
        if step not in sink.sums:
            return None
        maps = (sink.sums.pop(step) / sink.counts.pop(step)).cpu()  # (rows, columns, H, W); row 1 is the negative's
        m = maps[1].mean(dim=0).flatten().double()
        top = max(1, m.numel() // 10)
        return float(m.topk(top).values.sum() / m.sum().clamp_min(1e-12))

    def signals(self, x, t, step: int, eps_u, eps_pos, eps_neg) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.capture is not None:
            concentration = self._concentration(step)
            if concentration is not None:
                out["attention"] = concentration
        if eps_neg is not None:
            out["alignment"] = alignment(eps_u, eps_pos, eps_neg)
        if self.settings.signal is Signal.NEGATIVE_PREVIEW:
            if step >= self.settings.min_step:
                guided = cfg(eps_neg, eps_pos, self.sampler.engine.guidance_scale)
                out["negative_preview"] = float(self.detector(self.preview(x, t, guided)))
        elif self.detector is not None and step >= self.settings.min_step:
            out["detected"] = float(self.detector(self.preview(x, t, cfg(eps_u, eps_pos, self.sampler.engine.guidance_scale))))
        return out

    def preview(self, x, t, eps):
        """The decoded x0 prediction as a PIL image (what the detector sees)."""
        return self.decode(self.sampler.x0(x, eps, t))

    def decode(self, x0):
        pipe = self.sampler.engine.pipe
        image = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0]

    def decide(self, step: int, signals: dict[str, float]) -> bool:
        """Whether the signal has held for ``run`` consecutive probed steps (from ``min_step`` on)."""
        if step < self.settings.min_step:
            return False
        if self.settings.signal is Signal.DETECTOR:
            hit = bool(signals.get("detected"))
        elif self.settings.signal is Signal.NEGATIVE_PREVIEW:
            hit = bool(signals.get("negative_preview"))
        elif self.settings.signal is Signal.ATTENTION:
            hit = signals.get("attention", -math.inf) >= self.settings.attention_threshold
        else:
            hit = signals.get("alignment", -math.inf) >= self.settings.threshold
        self.streak = self.streak + 1 if hit else 0
        return self.streak >= self.settings.run


# AutoStart.choice -> the ROLLOUT search's decision rule.
CHOICES: dict[str, Decision] = {"midpoint": rollout_decision, "verified": rollout_verified, "gate": rollout_gate}

__all__ = ["AutoStart", "Signal", "alignment", "pooled_start", "probe_steps", "rollout_decision", "rollout_earliest",
           "rollout_extra", "rollout_extra_bound", "rollout_gate", "rollout_verified", "toy_detector_reads"]
