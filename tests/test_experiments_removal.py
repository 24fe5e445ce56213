"""Removal curves: the parallel binary search equals an exhaustive scan, and costs far less."""

from __future__ import annotations

import json

import pytest
import torch

from negschedule import generate
from negschedule.errors import InputError
from negschedule.experiments.metrics import ssim
from negschedule.experiments.removal import removal_curve, search_lengths
from negschedule.schedulers import set_scheduler

PROMPT = "a red cat"
NEG = "blue hat"


def test_search_finds_the_first_removing_length_with_few_questions():
    T = 20
    truth = {s: (None if s > 15 else abs(s - 6) + 2) for s in range(T)}  # a U shape, undefined late
    truth = {s: (v if v is None or v <= T - s else None) for s, v in truth.items()}
    asked = []

    def removes(pairs):
        asked.append(len(pairs))
        return {(s, L): truth[s] is not None and L >= truth[s] for s, L in pairs}

    assert search_lengths(range(T), T, removes) == truth
    assert sum(asked) < 100 < T * (T + 1) // 2  # about log2(T - s) + 1 questions per start, not T - s
    assert len(asked) <= 6  # rounds: one for L = T - s, then ceil(log2(T)) halvings
    from negschedule.experiments.removal import rounds_bound

    assert 1 + len(asked) <= rounds_bound(T)  # the baseline, then the rounds above


def test_curve_equals_exhaustive_scan_on_the_tiny_pipeline(tiny_sd, tmp_path):
    set_scheduler(tiny_sd, "dpmpp_2m")
    T = 6
    baseline = generate(tiny_sd, prompt=PROMPT, num_inference_steps=T, generator=torch.Generator().manual_seed(0)).images[0]
    # A stand-in detector: the concept is "present" while the image stays close to the no-negative one.
    # The threshold is chosen so that start 1 needs 3 steps here: a real binary search, not a first hit.
    detector = lambda image: ssim(image, baseline) > 0.99926  # noqa: E731
    curve = removal_curve(tiny_sd, prompt=PROMPT, negative_prompt=NEG, concept="cat", detector=detector, seeds=[0],
                          num_inference_steps=T, verify=True, out=tmp_path, progress=True)
    record = curve.records[0]
    assert record["baseline_present"] is True
    table = {}
    for s, L, removed in record["tested"]:
        table.setdefault(s, {})[L] = removed
    assert record["monotone"] is True, "the stand-in detector should be monotone here"
    for s in range(T):
        exhaustive = next((L for L in range(1, T - s + 1) if table[s][L]), None)
        assert curve.lengths(0)[s] == exhaustive
    assert curve.lengths(0)[1] == 3 and curve.critical_step(0) == 0
    # Cheaper than T(T+1)/2 + 1 full runs, in runs and in model evaluations.
    assert record["runs_sampled"] < record["exhaustive_runs"] == 1 + T * (T + 1) // 2
    assert record["model_evaluations"] < record["exhaustive_evaluations"] / 2
    data = json.loads((tmp_path / "curve.json").read_text())
    assert data["model_evaluations"] == record["model_evaluations"]
    assert (tmp_path / "curve.png").exists() and "critical step" in (tmp_path / "report.html").read_text().lower()


def test_windows_in_the_search_are_bit_exact_generate_calls(tiny_sd):
    set_scheduler(tiny_sd, "euler_a")
    T = 5
    seen = []

    def detector(image):
        seen.append(image)
        return True  # never removed: the search only tries L = T - s, the negative to the end

    curve = removal_curve(tiny_sd, prompt=PROMPT, negative_prompt=NEG, concept="cat", detector=detector, seeds=[3],
                          starts=[1, 3], num_inference_steps=T)
    assert curve.lengths(3) == {1: None, 3: None}
    import numpy as np

    for image, start in zip(seen[1:], [1, 3]):
        expected = generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=start, num_inference_steps=T,
                            generator=torch.Generator().manual_seed(3)).images[0]
        assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_bad_input(tiny_sd):
    with pytest.raises(InputError) as err:
        removal_curve(tiny_sd, prompt=PROMPT, negative_prompt=NEG, concept="cat", detector=lambda i: True, starts=[9],
                      num_inference_steps=5)
    assert err.value.argument == "starts"
    with pytest.raises(InputError) as err:
        removal_curve(tiny_sd, prompt=PROMPT, negative_prompt=NEG, concept="cat", detector="owl", num_inference_steps=5)
    assert err.value.argument == "detector"


def test_rerun_resumes_per_seed(tiny_sd, tmp_path):
    set_scheduler(tiny_sd, "ddim")
    T = 4
    kw = dict(prompt=PROMPT, negative_prompt=NEG, concept="cat", detector=lambda image: False, seeds=[0, 1],
              num_inference_steps=T, out=tmp_path)
    removal_curve(tiny_sd, **kw)
    first = (tmp_path / "curve.json").read_bytes()
    kept = (tmp_path / "units" / "seed0.json").stat().st_mtime_ns
    (tmp_path / "units" / "seed1.json").unlink()  # as if killed before seed 1 finished
    removal_curve(tiny_sd, **kw)
    assert (tmp_path / "units" / "seed0.json").stat().st_mtime_ns == kept
    assert (tmp_path / "curve.json").read_bytes() == first
