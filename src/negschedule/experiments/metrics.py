"""Per-image and per-column measurements of a sweep: structure (SSIM), removal, reverse activation.

This module owns the numbers the reports show. SSIM is Wang et al.'s (2004) with the usual
constants (Gaussian window sigma 1.5 truncated at radius 5, K1 0.01, K2 0.03, population
covariances, 8-bit data range), computed per RGB channel on the 0-255 pixels and averaged - the
same as scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=-1)``, written here on scipy so that no
image package with a torchvision dependency is needed.

Removal and reverse activation are defined against the no-negative image of the same prompt and
seed: *removed* - the concept is present without the negative and absent with it; *reverse
activated* - absent without the negative and present with it (arXiv:2406.02965's failure mode of
early negatives). Object-level preservation (toy world): the share of the no-negative image's
other objects still found, same name and box overlap (IoU) at least one half.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

_K1, _K2, _SIGMA, _RADIUS = 0.01, 0.03, 1.5, 5


def _rgb(image: Any) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    return array if array.ndim == 3 else array[..., None]


def ssim(a: Any, b: Any, data_range: float = 255.0) -> float:
    """Mean structural similarity of two images of one size (PIL images or HxWxC uint8 arrays)."""
    from scipy.ndimage import gaussian_filter

    x, y = _rgb(a), _rgb(b)
    if x.shape != y.shape:
        raise ValueError(f"ssim needs images of one size, got {x.shape} and {y.shape}")
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2

    def blur(z):
        return gaussian_filter(z, sigma=_SIGMA, truncate=_RADIUS / _SIGMA, mode="reflect")

    scores = []
    for c in range(x.shape[-1]):
        xc, yc = x[..., c], y[..., c]
        mx, my = blur(xc), blur(yc)
        vx = blur(xc * xc) - mx * mx
        vy = blur(yc * yc) - my * my
        cov = blur(xc * yc) - mx * my
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        # scikit-image crops the window radius from each border before averaging.
        r = _RADIUS
        scores.append(s[r:-r, r:-r].mean() if min(s.shape) > 2 * r else s.mean())
    return float(np.mean(scores))


def removed(baseline_present: bool | None, present: bool | None) -> bool | None:
    """The concept was there without the negative and is gone with it (None: not measured)."""
    if baseline_present is None or present is None:
        return None
    return bool(baseline_present and not present)


def reverse_activated(baseline_present: bool | None, present: bool | None) -> bool | None:
    """The concept was absent without the negative and the negative made it appear."""
    if baseline_present is None or present is None:
        return None
    return bool(not baseline_present and present)


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def objects_preserved(baseline: Iterable[Any], found: Iterable[Any], concept: str | None) -> float | None:
    """Share of the baseline's objects other than ``concept`` found again (same name, IoU >= 0.5)."""
    kept = [o for o in baseline if o.name != concept]
    if not kept:
        return None
    found = list(found)
    hits = sum(any(f.name == o.name and _iou(f.box, o.box) >= 0.5 for f in found) for o in kept)
    return hits / len(kept)


def rate(values: Iterable[bool | None]) -> float | None:
    """Share of True among the measured values (None where nothing was measured)."""
    measured = [bool(v) for v in values if v is not None]
    return sum(measured) / len(measured) if measured else None


def mean(values: Iterable[float | None]) -> float | None:
    measured = [float(v) for v in values if v is not None]
    return float(np.mean(measured)) if measured else None


def summarize(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """One row per column (start step or window): n, mean SSIM, removal / reverse-activation rates, preservation.

    The rates' denominators are the images where they can happen: removal among the seeds whose
    no-negative image shows the concept, reverse activation among those where it does not.
    """
    rows = []
    for column in columns:
        cells = [r for r in records if r["column"] == column]
        rows.append(
            {
                "column": column,
                "n": len(cells),
                "ssim": mean(c["ssim"] for c in cells),
                "removal_rate": rate(c["removed"] for c in cells if c["baseline_present"]),
                "reverse_activation_rate": rate(c["reverse_activated"] for c in cells if c["baseline_present"] is False),
                "present_rate": rate(c["present"] for c in cells),
                "objects_preserved": mean(c["objects_preserved"] for c in cells),
            }
        )
    return rows
