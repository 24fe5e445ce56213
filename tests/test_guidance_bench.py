"""bench-guidance end to end on a few prompts and steps: the files, the rows, the summary's figures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from negschedule.cli import main
from negschedule.schedulers import set_scheduler
from negschedule.experiments.bench_guidance import best_start, within_one_step, within_one_step_of_own


def test_bench_guidance_writes_table_and_summary(tmp_path, tiny_sd, capsys):
    model = tmp_path / "model"
    set_scheduler(tiny_sd, "ddim")  # one pass per step, whatever an earlier test left on the shared pipeline
    tiny_sd.save_pretrained(model)
    out = tmp_path / "bench"
    code = main(["bench-guidance", "--out", str(out), "--model", str(model), "--prompts", "2", "--seeds", "0", "--steps", "4",
                 "--threads", "1", "--examples", "1"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "table.csv")))
    methods = [r["method"] for r in rows]
    assert methods[:5] == ["no negative", "start 0 (0%)", "start 0 (10%)", "start 0 (20%)", "start 1 (33%)"]
    assert {"oracle", "auto", "negative_scale", "perp_neg", "sigma_window", "dng (prior 0.1, T 1)"} <= set(methods)
    for column in ("removal_success", "reverse_activation", "ssim_to_no_negative", "positive_fidelity", "evaluations_per_image"):
        assert column in rows[0]
    cost = {r["method"]: float(r["evaluations_per_image"]) for r in rows}
    assert cost["start 1 (33%)"] == 8 and cost["negative_scale"] == cost["perp_neg"] == cost["dng (prior 0.1, T 1)"] == 12
    assert cost["auto"] <= 1.3 * 8
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["auto_within_one_step"] <= 1.0
    assert set(summary["fixed_start_within_one_step"]) == {"0", "1", "2"}  # starts 0..int(0.5 * 4)
    assert 0.0 <= summary["image_oracle_within_one_step"] <= 1.0
    assert {"auto", "start 0", "start 2"} <= set(summary["within_one_step_of_own_best_start"])
    assert all(0 <= k <= 2 for p in summary["prompts"] for k in p["image_oracles"])
    assert len(summary["prompts"]) == 2 and (out / "examples.png").exists()

    # The study script that reads auto's signals beside the oracle takes this summary as it is.
    traces = tmp_path / "traces.json"
    script = Path(__file__).parents[1] / "benchmarks" / "trace_auto_signals.py"
    done = subprocess.run([sys.executable, str(script), str(out / "summary.json"), "--out", str(traces), "--threads", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = json.loads(traces.read_text())
    assert [(r["prompt"], r["seed"]) for r in records] == [(p["prompt"], 0) for p in summary["prompts"]]
    for record in records:  # the rule never fires, so every step before the latest start (int(0.5 * 4) = 2) is probed
        assert [t["step"] for t in record["trace"]] == [0, 1]
        assert all(0.0 < t["attention"] <= 1.0 and -1.0 <= t["alignment"] <= 1.0 for t in record["trace"])


def test_bench_guidance_only_runs_the_named_methods_and_a_per_prompt_start_is_shared(tmp_path, tiny_sd, capsys):
    model = tmp_path / "model"
    set_scheduler(tiny_sd, "ddim")  # one pass per step, whatever an earlier test left on the shared pipeline
    tiny_sd.save_pretrained(model)
    out = tmp_path / "bench"
    name = "auto[rollout, 2 jumps, per prompt]"
    code = main(["bench-guidance", "--out", str(out), "--model", str(model), "--prompts", "2", "--seeds", "0,1", "--steps", "4",
                 "--threads", "1", "--examples", "1", "--study", "--only", name])
    assert code == 0, capsys.readouterr().err
    methods = [r["method"] for r in csv.DictReader(open(out / "table.csv"))]
    assert methods[-2:] == ["auto", name] and "perp_neg" not in methods
    summary = json.loads((out / "summary.json").read_text())
    for prompt in summary["prompts"]:
        first, second = prompt["auto_starts"][name]
        assert first == second and 0 <= first <= 2  # one start for the prompt's two seeds, within the cap


def test_bench_guidance_bad_input(tmp_path, capsys):
    assert main(["bench-guidance", "--out", str(tmp_path / "b"), "--prompts", "0"]) == 2
    assert "prompts=" in capsys.readouterr().err
    assert main(["bench-guidance", "--out", str(tmp_path / "o"), "--study", "--only", "vibes"]) == 2
    assert "only='vibes'" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["bench-guidance", "--out", str(tmp_path / "m"), "--model", str(tmp_path / "nowhere")]) == 2
    assert "model=" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_within_one_step_counts_prompts_by_their_mean_start_and_images_one_by_one():
    # prompt 1: starts 3 and 6 average to 4.5 -> 4, one from the oracle 5; images: 3 is two away, 6 one
    # prompt 2: both starts 0, the oracle 10
    assert within_one_step([[3, 6], [0, 0]], [5, 10]) == (0.5, 0.25)
    assert within_one_step([[10]], [9]) == (1.0, 1.0)
    # against each image's own best start: 3 vs 5 misses, 6 vs 6 hits; 0 vs 1 hits, 0 vs 10 misses
    assert within_one_step_of_own([[3, 6], [0, 0]], [[5, 6], [1, 10]]) == 0.5


def test_best_start_prefers_removal_then_structure_then_the_earlier_start():
    assert best_start([1.0, 1.0, 0.5, 0.0], [0.3, 0.5, 0.7, 0.9]) == 1  # the latest start that still removes as often
    assert best_start([0.0, 0.0, 0.0], [0.3, 0.6, 0.6]) == 1  # nothing removes: the best structure, earliest on ties
    assert best_start([0.5, 0.0, 1.0], [0.9, 0.9, 0.1]) == 2  # removal first, whatever the structure


def test_bench_guidance_resumes_after_an_interrupt_and_ends_as_an_uninterrupted_run(tmp_path, tiny_sd, capsys, monkeypatch):
    import negschedule.experiments.bench_guidance as bench

    model = tmp_path / "model"
    set_scheduler(tiny_sd, "ddim")  # one pass per step, whatever an earlier test left on the shared pipeline
    tiny_sd.save_pretrained(model)
    args = ["--model", str(model), "--prompts", "3", "--seeds", "0", "--steps", "4", "--threads", "1", "--examples", "2",
            "--study", "--only", "perp_neg"]
    assert main(["bench-guidance", "--out", str(tmp_path / "whole"), *args]) == 0
    real, calls = bench._bench_prompt, []

    def interrupted_at_the_second(pipe, cfg, row, *rest, **kw):
        calls.append(row["prompt"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(pipe, cfg, row, *rest, **kw)

    monkeypatch.setattr(bench, "_bench_prompt", interrupted_at_the_second)
    out = tmp_path / "resumed"
    capsys.readouterr()
    assert main(["bench-guidance", "--out", str(out), *args]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "units").iterdir()) == ["prompt-0000.json"] and not (out / "table.csv").exists()

    redone = []
    monkeypatch.setattr(bench, "_bench_prompt", lambda pipe, cfg, row, *rest, **kw: redone.append(row["prompt"]) or real(pipe, cfg, row, *rest, **kw))
    assert main(["bench-guidance", "--out", str(out), *args]) == 0
    assert redone == calls[1:] + [r["prompt"] for r in bench.prompt_set(bench.BenchConfig(prompts=3))][2:]  # the first prompt is read back
    assert "prompt 1/3 (read back from an earlier run)" in capsys.readouterr().err
    assert (out / "table.csv").read_bytes() == (tmp_path / "whole" / "table.csv").read_bytes()
    whole, resumed = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "whole", out))
    for summary in (whole, resumed):
        summary.pop("wall_s"), summary["config"].pop("out")
    assert resumed == whole
    assert (out / "examples.png").read_bytes() == (tmp_path / "whole" / "examples.png").read_bytes()

    # Other settings into the same folder, or other weights at the same model path: refused, naming the folder.
    other = [("1" if previous == "--examples" else a) for previous, a in zip([None, *args], args)]
    assert main(["bench-guidance", "--out", str(out), *other]) == 2
    assert "out=" in capsys.readouterr().err
    from negschedule.tiny import build_tiny_sd

    build_tiny_sd(seed=1).save_pretrained(model)
    assert main(["bench-guidance", "--out", str(out), *args]) == 2
    assert "settings differ in weights" in capsys.readouterr().err
