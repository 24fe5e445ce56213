"""How a negative prompt acts: guidance rules as small pure functions on noise predictions.

This module owns the maths of combining the model's predictions at one step - nothing here
knows about pipelines, schedulers or steps (``schedule.py`` says *when*, the samplers say *with
what*). Each function takes the unconditional prediction ``eps_u`` (the empty prompt), the
positive ``eps_pos`` and, where the rule has one, the negative ``eps_neg``, all of one shape
``(batch, C, H, W)``, and returns the prediction the scheduler steps with. They are unit-tested on
plain tensors against their formulas (``tests/test_guidance.py``).

:class:`GuidanceRule` names the rules; :class:`Guidance` is the typed choice with its parameters
(one dataclass, a comment on each default). ``evaluations_per_step`` states what each rule costs
in model evaluations per latent per step; the samplers count them and the tests check the counts.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from .errors import InputError


def cfg(eps_u: torch.Tensor, eps_c: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``eps_u + w (eps_c - eps_u)``.

    Ho & Salimans, arXiv:2207.12598 (written in diffusers' form). With a negative prompt
    ``eps_u`` is the negative's prediction (the stock "negative prompt" and the timed negative of
    ``generate()``); without one it is the empty prompt's.
    """
    return eps_u + scale * (eps_c - eps_u)


def negative_scale(eps_u: torch.Tensor, eps_pos: torch.Tensor, eps_neg: torch.Tensor, scale: float, neg_scale: float) -> torch.Tensor:
    """A separate negative scale: ``eps_u + g (eps_pos - eps_u) - n (eps_neg - eps_u)``.

    kohya-ss sd-scripts ``gen_img_diffusers.py --negative_scale``: three branches (empty prompt,
    prompt, negative prompt) and two scales, so the negative's push is set apart from the
    positive's pull. ``n = g`` is *not* the stock negative prompt: that one is
    ``eps_neg + g (eps_pos - eps_neg)``, which equals this with ``n = g - 1`` (see the tests).
    """
    return eps_u + scale * (eps_pos - eps_u) - neg_scale * (eps_neg - eps_u)


def _per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shaped to broadcast over ``(batch, ...)``."""
    dims = tuple(range(1, a.ndim))
    return (a * b).sum(dim=dims, keepdim=True)


def perp_neg(eps_u: torch.Tensor, eps_pos: torch.Tensor, eps_neg: torch.Tensor, scale: float, neg_scale: float) -> torch.Tensor:
    """Perp-Neg: ``eps_u + g (d_pos - n d_neg_perp)`` with ``d = eps - eps_u`` and
    ``d_neg_perp = d_neg - (<d_neg, d_pos> / |d_pos|^2) d_pos``.

    Armandpour et al., "Re-imagine the Negative Prompt Algorithm", arXiv:2304.04968:
    only the part of the negative direction perpendicular to the positive one is subtracted, so a
    negative that overlaps the prompt cannot cancel the prompt's own content. Written as ComfyUI's
    ``PerpNegGuider`` writes it (the negative term inside the scale ``g``), but the projection is
    per sample (ComfyUI's sums over the whole batch). Where ``d_pos`` is zero nothing is projected.
    """
    d_pos = eps_pos - eps_u
    d_neg = eps_neg - eps_u
    norm2 = _per_sample_dot(d_pos, d_pos)
    coeff = torch.where(norm2 > 0, _per_sample_dot(d_neg, d_pos) / norm2.clamp_min(torch.finfo(norm2.dtype).tiny), torch.zeros_like(norm2))
    perp = d_neg - coeff * d_pos
    return eps_u + scale * (d_pos - neg_scale * perp)


def sigma_of(alpha_bar: float | torch.Tensor) -> float:
    """The noise level of a VP timestep: ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` (k-diffusion's sigma)."""
    a = float(alpha_bar)
    return math.sqrt((1.0 - a) / a)


def in_sigma_window(
    sigma: float, sigma_min: float | None, sigma_max: float | None, step: int | None = None, min_every_other: bool = False
) -> bool:
    """Whether guidance runs at noise level ``sigma``: ``sigma_min <= sigma <= sigma_max`` (None: unbounded).

    Kynkäänniemi et al., "Applying Guidance in a Limited Interval Improves Sample and Distribution
    Quality", arXiv:2404.07724: guidance weight ``w`` for ``sigma`` in ``(sigma_lo, sigma_hi]``
    and 1 (the conditional prediction alone) elsewhere. AUTOMATIC1111's "Negative Guidance minimum
    sigma" is the one-sided case (``sigma_max`` None): below it only the positive is evaluated -
    but by default only on odd steps (``step % 2 == 1``; its "NGMS all steps" option makes it every
    step), because alternating lets a higher threshold save time with less loss of quality.
    ``min_every_other=True`` reproduces that default: below ``sigma_min`` an even ``step`` still guides.
    """
    if sigma_min is not None and sigma < sigma_min:
        if min_every_other and step is None:
            raise ValueError("min_every_other needs the step")
        return bool(min_every_other and step % 2 == 0)
    if sigma_max is not None and sigma > sigma_max:
        return False
    return True


def sigma_window(eps_u: torch.Tensor | None, eps_c: torch.Tensor, scale: float, inside: bool) -> torch.Tensor:
    """Guidance in a sigma window: ``cfg(eps_u, eps_c, w)`` inside, ``eps_c`` outside (arXiv:2404.07724).

    Outside the window ``eps_u`` is not needed, so the samplers skip its model evaluation there
    (pass ``None``).
    """
    if not inside:
        return eps_c
    if eps_u is None:
        raise ValueError("inside the window the unconditional prediction is needed")
    return cfg(eps_u, eps_c, scale)


def dng_scale(posterior: torch.Tensor, neg_scale: float) -> torch.Tensor:
    """DNG's time- and state-dependent negative scale: ``lambda_t = lambda p_t / (1 - p_t)``, per sample.

    Koulischer et al., "Dynamic Negative Guidance of Diffusion Models", arXiv:2410.14398 (ICLR
    2025), Alg. 1; the reference implementation (github.com/FelixKoulischer/Dynamic-Negative-Guidance,
    ``gen_batch_DNG``) writes it this way. ``p_t`` is the tracked posterior of the negative concept.
    """
    return neg_scale * posterior / (1.0 - posterior)


def dynamic_negative(
    eps_u: torch.Tensor, eps_pos: torch.Tensor, eps_neg: torch.Tensor, scale: float, neg_scale: float, posterior: torch.Tensor
) -> torch.Tensor:
    """Dynamic Negative Guidance: ``eps_u + g (eps_pos - eps_u) - lambda_t (eps_neg - eps_u)``,
    ``lambda_t = lambda p_t / (1 - p_t)`` per sample (:func:`dng_scale`).

    arXiv:2410.14398, Alg. 1: negative prompting with a scale that follows the posterior of the
    negative concept, so the push is ~0 while the image does not contain it and grows as it
    appears. The positive CFG term is the text-to-image form (their Stable Diffusion section);
    their class-removal experiments have no positive, which is ``eps_pos = eps_u`` here.
    """
    lam = dng_scale(posterior, neg_scale).reshape(-1, *([1] * (eps_u.ndim - 1))).to(eps_u)
    return eps_u + scale * (eps_pos - eps_u) - lam * (eps_neg - eps_u)


def dng_posterior_update(
    posterior: torch.Tensor,
    x_next: torch.Tensor,
    x: torch.Tensor,
    eps_u: torch.Tensor,
    eps_neg: torch.Tensor,
    alpha_bar: float,
    alpha_bar_next: float,
    temperature: float = 1.0,
    offset: float = 0.0,
    p_min: float = 1e-6,
    p_max: float = 0.99,
) -> torch.Tensor:
    """One step of DNG's posterior tracking, per sample (arXiv:2410.14398, Alg. 1).

    The reverse chain is a Markov chain with Gaussian transitions of mean ``mu(eps) =
    (x - (1 - a) / sqrt(1 - alpha_bar) eps) / sqrt(a)``, ``a = alpha_bar / alpha_bar_next``, and
    variance ``s2 = (1 - alpha_bar_next) / (1 - alpha_bar) (1 - a)`` (DDPM's posterior variance).
    Bayes' rule over one transition, with the negative-conditioned and the unconditional
    transition as the two likelihoods, gives::

        p_next = clamp(p * exp((-T (|x_next - mu(eps_neg)|^2 - |x_next - mu(eps_u)|^2) + offset) / (2 s2)), p_min, p_max)

    ``T`` (temperature) tempers the likelihood ratio; ``offset`` biases it; the clamp keeps
    ``p / (1 - p)`` finite. This follows the reference implementation's ``compute_posterior_DNG``
    (the paper's Alg. 1); the paper's equation numbers were not available to us, so the citation
    is to the algorithm. ``x``/``x_next`` are variance-preserving latents at the current and the
    next (less noisy) timestep; ``alpha_bar``/``alpha_bar_next`` their cumulative alphas. At the
    last step (``alpha_bar_next`` = 1) the variance vanishes and the posterior is left as it is.
    """
    a = alpha_bar / alpha_bar_next
    s2 = (1.0 - alpha_bar_next) / (1.0 - alpha_bar) * (1.0 - a)
    if s2 <= 0:
        return posterior
    coef = (1.0 - a) / math.sqrt(1.0 - alpha_bar)
    mu_u = (x - coef * eps_u) / math.sqrt(a)
    mu_neg = (x - coef * eps_neg) / math.sqrt(a)
    dims = tuple(range(1, x.ndim))
    diff = ((x_next - mu_neg) ** 2).sum(dim=dims) - ((x_next - mu_u) ** 2).sum(dim=dims)
    # In log space, so a large likelihood ratio saturates at p_max instead of overflowing.
    log_p = torch.log(posterior.to(diff)) + (-temperature * diff + offset) / (2.0 * s2)
    return log_p.exp().clamp(p_min, p_max)


class GuidanceRule(enum.Enum):
    """The guidance rules offered; the values are the names the API and the CLI take."""

    CFG = "cfg"  # stock CFG: the negative (if any) replaces the empty prompt from step 0
    TIMED = "timed"  # CFG with a timed negative (negative_start/end): the core of negschedule
    NEGATIVE_SCALE = "negative_scale"  # kohya's --negative_scale: three branches, two scales
    PERP_NEG = "perp_neg"  # arXiv:2304.04968: only the negative's part perpendicular to the positive
    SIGMA_WINDOW = "sigma_window"  # arXiv:2404.07724 / A1111 minimum sigma: guidance only in a sigma window
    DNG = "dng"  # arXiv:2410.14398: negative scale from a tracked posterior of the negative concept

    @classmethod
    def parse(cls, value: "GuidanceRule | str") -> "GuidanceRule":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower().replace("-", "_"))
        except ValueError:
            raise InputError("guidance", value, f"choose one of {', '.join(r.value for r in cls)}") from None


# Rules that evaluate the empty prompt, the prompt and the negative at every step.
THREE_BRANCH = frozenset({GuidanceRule.NEGATIVE_SCALE, GuidanceRule.PERP_NEG, GuidanceRule.DNG})


@dataclass(frozen=True)
class Guidance:
    """A guidance rule and its parameters (the positive scale is the call's ``guidance_scale``)."""

    rule: GuidanceRule = GuidanceRule.CFG
    # negative_scale / perp_neg: the negative's weight n; dng: lambda (the scale at p/(1-p) = 1).
    # None: the rule's own default - negative_scale and dng: the positive guidance_scale (kohya's
    # default when --negative_scale is not given); perp_neg: 1 (ComfyUI PerpNegGuider's neg_scale;
    # its n sits inside the scale g, so n = g would weigh the negative g^2).
    negative_scale: float | None = None
    # sigma_window: guidance for sigma in [sigma_min, sigma_max]; None is unbounded on that side.
    # Defaults: A1111-style "minimum sigma" of 0.28 off (None) and the paper's SD-XL upper bound off.
    sigma_min: float | None = None
    sigma_max: float | None = None
    # sigma_window: below sigma_min skip the negative on odd steps only, as A1111's "Negative Guidance
    # minimum sigma" does unless its "NGMS all steps" option is on; False: every step (the paper's window).
    sigma_min_every_other: bool = False
    # dng: prior of the negative concept, likelihood temperature, offset and the posterior's clamp.
    # Defaults are the reference implementation's example run (prior 0.01, Temp 0.2, p_max 0.8).
    prior: float = 0.01
    temperature: float = 0.2
    offset: float = 0.0
    p_min: float = 1e-6
    p_max: float = 0.8

    @classmethod
    def of(cls, value: "Guidance | GuidanceRule | str | None") -> "Guidance":
        """A Guidance from a Guidance, a rule or a rule name (None: plain CFG)."""
        if value is None:
            return cls()
        if isinstance(value, Guidance):
            value.validate()
            return value
        return cls(rule=GuidanceRule.parse(value))

    def validate(self) -> None:
        if not isinstance(self.rule, GuidanceRule):
            GuidanceRule.parse(self.rule)
            raise InputError("guidance", self.rule, "give a GuidanceRule (use Guidance.of for names)")
        if self.negative_scale is not None and self.negative_scale < 0:
            raise InputError("negative_scale", self.negative_scale, "must be >= 0")
        for name in ("sigma_min", "sigma_max"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise InputError(name, v, "must be >= 0")
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min > self.sigma_max:
            raise InputError("sigma_min", self.sigma_min, f"is above sigma_max={self.sigma_max}")
        # A setting the chosen rule does not read would be silently ignored: refuse it instead.
        if self.rule is not GuidanceRule.SIGMA_WINDOW:
            for name in ("sigma_min", "sigma_max"):
                if getattr(self, name) is not None:
                    raise InputError(name, getattr(self, name), f"only acts with guidance 'sigma_window', not '{self.rule.value}'")
        if self.sigma_min_every_other and self.sigma_min is None:
            raise InputError("sigma_min_every_other", True, "needs a sigma_min (the level below which it alternates)")
        if self.negative_scale is not None and self.rule not in THREE_BRANCH:
            raise InputError("negative_scale", self.negative_scale,
                             f"only acts with guidance negative_scale, perp_neg or dng, not '{self.rule.value}'")
        if not 0 < self.prior < 1:
            raise InputError("prior", self.prior, "must be in (0, 1)")
        if not 0 < self.p_min < self.p_max < 1:
            raise InputError("p_max", self.p_max, "need 0 < p_min < p_max < 1")
        if self.temperature < 0:
            raise InputError("temperature", self.temperature, "must be >= 0")

    def resolved_negative_scale(self, guidance_scale: float) -> float:
        """The negative weight this rule uses with positive scale ``guidance_scale``."""
        if self.negative_scale is not None:
            return self.negative_scale
        return 1.0 if self.rule is GuidanceRule.PERP_NEG else guidance_scale

    def guides_at(self, sigma: float, step: int) -> bool:
        """Whether the sigma window guides at ``step`` (noise level ``sigma``); True for every other rule."""
        if self.rule is not GuidanceRule.SIGMA_WINDOW:
            return True
        return in_sigma_window(sigma, self.sigma_min, self.sigma_max, step, self.sigma_min_every_other)

    def evaluations_per_step(self, inside_window: bool = True) -> int:
        """Model evaluations per latent per step: CFG/timed 2, three-branch rules 3, sigma window 2 inside / 1 outside."""
        if self.rule in THREE_BRANCH:
            return 3
        if self.rule is GuidanceRule.SIGMA_WINDOW and not inside_window:
            return 1
        return 2


__all__ = [
    "Guidance",
    "GuidanceRule",
    "THREE_BRANCH",
    "cfg",
    "dng_posterior_update",
    "dng_scale",
    "dynamic_negative",
    "in_sigma_window",
    "negative_scale",
    "perp_neg",
    "sigma_of",
    "sigma_window",
]
