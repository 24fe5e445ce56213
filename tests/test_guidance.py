"""Guidance rules on plain tensors, against their formulas (guidance.py)."""

import math

import pytest
import torch

from negschedule import InputError
from negschedule import guidance as g

torch.set_num_threads(1)


def _eps(seed, shape=(2, 4, 3, 3)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def test_cfg_formula_and_endpoints():
    u, c = _eps(0), _eps(1)
    assert torch.allclose(g.cfg(u, c, 7.5), u + 7.5 * (c - u))
    assert torch.equal(g.cfg(u, c, 1.0), u + 1.0 * (c - u))
    assert torch.allclose(g.cfg(u, c, 0.0), u)


def test_negative_scale_formula_and_stock_equivalence():
    u, p, n = _eps(0), _eps(1), _eps(2)
    out = g.negative_scale(u, p, n, 7.0, 3.0)
    assert torch.allclose(out, u + 7.0 * (p - u) - 3.0 * (n - u))
    # n = 0: plain CFG with the empty prompt; n = g - 1: the stock negative prompt eps_n + g(eps_p - eps_n).
    assert torch.allclose(g.negative_scale(u, p, n, 7.0, 0.0), g.cfg(u, p, 7.0))
    assert torch.allclose(g.negative_scale(u, p, n, 7.0, 6.0), g.cfg(n, p, 7.0))


def test_perp_neg_removes_only_the_perpendicular_part():
    u, p, n = _eps(0), _eps(1), _eps(2)
    out = g.perp_neg(u, p, n, 5.0, 2.0)
    for b in range(u.shape[0]):  # per sample, by hand
        dp, dn = (p[b] - u[b]).flatten(), (n[b] - u[b]).flatten()
        perp = dn - (dn @ dp) / (dp @ dp) * dp
        assert abs(float(perp @ dp)) < 1e-9
        expected = u[b].flatten() + 5.0 * (dp - 2.0 * perp)
        assert torch.allclose(out[b].flatten(), expected)
    # A negative parallel to the positive direction is ignored entirely.
    parallel = u + 3.0 * (p - u)
    assert torch.allclose(g.perp_neg(u, p, parallel, 5.0, 2.0), g.cfg(u, p, 5.0))
    # Projection is per sample: changing sample 1 leaves sample 0's result alone.
    n2 = n.clone()
    n2[1] += 10
    assert torch.equal(g.perp_neg(u, p, n2, 5.0, 2.0)[0], out[0])


def test_perp_neg_zero_positive_direction():
    u, n = _eps(0), _eps(2)
    out = g.perp_neg(u, u.clone(), n, 5.0, 1.0)
    assert torch.allclose(out, u - 5.0 * (n - u))
    assert torch.isfinite(out).all()


def test_sigma_window():
    assert g.sigma_of(0.5) == pytest.approx(1.0)
    assert g.sigma_of(0.2) == pytest.approx(math.sqrt(4.0))
    assert g.in_sigma_window(1.0, None, None)
    assert g.in_sigma_window(1.0, 0.28, None) and not g.in_sigma_window(0.2, 0.28, None)
    assert g.in_sigma_window(0.28, 0.28, 5.42) and g.in_sigma_window(5.42, 0.28, 5.42)
    assert not g.in_sigma_window(5.5, 0.28, 5.42)
    # A1111's default minimum sigma alternates: below it, odd steps skip the negative and even ones guide.
    assert [g.in_sigma_window(0.2, 0.28, None, step, True) for step in range(4)] == [True, False, True, False]
    assert all(g.in_sigma_window(0.3, 0.28, None, step, True) for step in range(4))
    assert not g.in_sigma_window(6.0, 0.28, 5.42, 0, True)  # the upper bound never alternates
    with pytest.raises(ValueError, match="step"):
        g.in_sigma_window(0.2, 0.28, None, None, True)
    u, c = _eps(0), _eps(1)
    assert torch.equal(g.sigma_window(None, c, 7.5, inside=False), c)
    assert torch.allclose(g.sigma_window(u, c, 7.5, inside=True), g.cfg(u, c, 7.5))
    with pytest.raises(ValueError):
        g.sigma_window(None, c, 7.5, inside=True)


def test_dng_scale_and_combination():
    p = torch.tensor([0.0, 0.5, 0.8], dtype=torch.float64)
    assert torch.allclose(g.dng_scale(p, 2.0), torch.tensor([0.0, 2.0, 8.0], dtype=torch.float64))
    u, pos, n = _eps(0, (3, 2, 2, 2)), _eps(1, (3, 2, 2, 2)), _eps(2, (3, 2, 2, 2))
    out = g.dynamic_negative(u, pos, n, 7.0, 2.0, p)
    for b, lam in enumerate([0.0, 2.0, 8.0]):
        assert torch.allclose(out[b], u[b] + 7.0 * (pos[b] - u[b]) - lam * (n[b] - u[b]))
    # Posterior at 0: plain CFG with the empty prompt.
    assert torch.allclose(g.dynamic_negative(u, pos, n, 7.0, 2.0, torch.zeros(3, dtype=torch.float64)), g.cfg(u, pos, 7.0))


def test_dng_posterior_update_formula():
    x, eu, en = _eps(0), _eps(1), _eps(2)
    ab, ab_next = 0.3, 0.5
    a = ab / ab_next
    s2 = (1 - ab_next) / (1 - ab) * (1 - a)
    coef = (1 - a) / math.sqrt(1 - ab)
    mu_u, mu_n = (x - coef * eu) / math.sqrt(a), (x - coef * en) / math.sqrt(a)
    # A step that lands on the negative's mean raises the posterior, on the unconditional's lowers it.
    p0 = torch.full((2,), 0.01, dtype=torch.float64)
    up = g.dng_posterior_update(p0, mu_n, x, eu, en, ab, ab_next, temperature=1e-3, p_max=0.99)
    down = g.dng_posterior_update(p0, mu_u, x, eu, en, ab, ab_next, temperature=1e-3, p_max=0.99)
    assert (up > p0).all() and (down < p0).all()
    # Exact value against the formula.
    xn = 0.5 * (mu_u + mu_n) + 0.01 * _eps(3)
    T, off = 0.002, 0.1
    diff = ((xn - mu_n) ** 2).sum(dim=(1, 2, 3)) - ((xn - mu_u) ** 2).sum(dim=(1, 2, 3))
    expected = (p0 * torch.exp((-T * diff + off) / (2 * s2))).clamp(1e-6, 0.99)
    got = g.dng_posterior_update(p0, xn, x, eu, en, ab, ab_next, temperature=T, offset=off, p_max=0.99)
    assert torch.allclose(got, expected)
    # Clamped to [p_min, p_max]; the last step (alpha_bar_next = 1) leaves it as it is.
    big = g.dng_posterior_update(p0, mu_n, x, eu, en, ab, ab_next, temperature=1.0, p_max=0.8)
    assert torch.allclose(big, torch.full((2,), 0.8, dtype=torch.float64))
    assert torch.equal(g.dng_posterior_update(p0, mu_n, x, eu, en, 0.9, 1.0), p0)


def test_rule_names_and_costs():
    assert g.GuidanceRule.parse("perp-neg") is g.GuidanceRule.PERP_NEG
    assert g.Guidance.of("dng").rule is g.GuidanceRule.DNG
    assert g.Guidance.of(None).rule is g.GuidanceRule.CFG
    with pytest.raises(InputError, match="guidance"):
        g.Guidance.of("sld")
    with pytest.raises(InputError, match="sigma_min"):
        g.Guidance.of(g.Guidance(g.GuidanceRule.SIGMA_WINDOW, sigma_min=2.0, sigma_max=1.0))
    with pytest.raises(InputError, match="prior"):
        g.Guidance.of(g.Guidance(g.GuidanceRule.DNG, prior=1.0))
    # Settings the rule does not read are refused, not ignored.
    with pytest.raises(InputError, match="sigma_min.*only acts with guidance 'sigma_window'"):
        g.Guidance.of(g.Guidance(g.GuidanceRule.CFG, sigma_min=0.28))
    with pytest.raises(InputError, match="negative_scale.*only acts"):
        g.Guidance.of(g.Guidance(g.GuidanceRule.SIGMA_WINDOW, negative_scale=3.0))
    with pytest.raises(InputError, match="sigma_min_every_other.*needs a sigma_min"):
        g.Guidance.of(g.Guidance(g.GuidanceRule.SIGMA_WINDOW, sigma_min_every_other=True))
    costs = {r: g.Guidance(r).evaluations_per_step() for r in g.GuidanceRule}
    assert costs == {
        g.GuidanceRule.CFG: 2,
        g.GuidanceRule.TIMED: 2,
        g.GuidanceRule.NEGATIVE_SCALE: 3,
        g.GuidanceRule.PERP_NEG: 3,
        g.GuidanceRule.SIGMA_WINDOW: 2,
        g.GuidanceRule.DNG: 3,
    }
    assert g.Guidance(g.GuidanceRule.SIGMA_WINDOW).evaluations_per_step(inside_window=False) == 1
