"""Sweeps: images equal generate(), evaluation counts, files and report, metrics, CLI, resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from negschedule import generate
from negschedule.errors import InputError
from negschedule.experiments import sweep
from negschedule.experiments.commands import main, parse_steps
from negschedule.experiments.metrics import ssim, summarize
from negschedule.schedulers import set_scheduler

T = 4
PROMPT = "a red cat"
NEG = "blue hat"


def pixels(image):
    return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_sd):
    folder = tmp_path_factory.mktemp("tiny_model")
    set_scheduler(tiny_sd, "ddim")
    tiny_sd.save_pretrained(folder)
    return folder


def test_sweep_images_equal_generate_and_count_shared_evaluations(tiny_sd):
    set_scheduler(tiny_sd, "dpmpp_2m")
    result = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=range(T), seeds=[0, 1], num_inference_steps=T)
    for seed in (0, 1):
        for start in (None, 0, 2, T - 1):
            timing = {} if start is None else dict(negative_prompt=NEG, negative_start=start)
            expected = generate(tiny_sd, prompt=PROMPT, num_inference_steps=T, generator=torch.Generator().manual_seed(seed), **timing).images[0]
            assert np.array_equal(pixels(result.image(seed, start)), pixels(expected)), (seed, start)
    # Per seed: T trunk steps + (T - k) steps for each start k, two evaluations each (CFG).
    assert result.model_evaluations == 2 * 2 * (T + T * (T + 1) // 2)
    assert result.independent_evaluations == 2 * 2 * T * (T + 1)


def test_calibrated_batching_gives_the_same_sweep(tiny_sd):
    set_scheduler(tiny_sd, "euler_a")
    kw = dict(prompt=PROMPT, negative_prompt=NEG, starts=range(T), seeds=[0], num_inference_steps=T)
    exact, calibrated = sweep(tiny_sd, **kw), sweep(tiny_sd, batching="calibrated", **kw)
    for start in [None, *range(T)]:
        assert np.array_equal(pixels(exact.image(0, start)), pixels(calibrated.image(0, start)))
    assert calibrated.model_evaluations == exact.model_evaluations


def test_windows_and_several_prompts(tiny_sd):
    set_scheduler(tiny_sd, "euler")
    prompts = [PROMPT, "a green dog"]
    result = sweep(tiny_sd, prompt=prompts, negative_prompt=NEG, windows=[(1, 3)], seeds=[5], num_inference_steps=T)
    assert result.columns == ["none", "1-3"]
    expected = generate(tiny_sd, prompt=prompts[1], negative_prompt=NEG, negative_start=1, negative_end=3,
                        num_inference_steps=T, generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(pixels(result.image(5, (1, 3), prompt=1)), pixels(expected))


def test_ssim_matches_scikit_image():
    # Reference values from skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=255, channel_axis=-1) on these arrays.
    rng = np.random.default_rng(0)
    expected = [0.9059638536972269, 0.9030016347531693]
    for shape, value in zip([(32, 32, 3), (64, 48, 3)], expected):
        a = rng.integers(0, 255, shape, dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-60, 60, shape), 0, 255).astype(np.uint8)
        assert ssim(a, b) == pytest.approx(value, abs=1e-12)
        assert ssim(a, a) == pytest.approx(1.0)


def test_removal_and_reverse_activation_rates_with_a_stub_detector(tiny_sd, monkeypatch):
    toyworld = pytest.importorskip("negschedule.toyworld")

    set_scheduler(tiny_sd, "ddim")
    reference = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=[0, 2], seeds=[0, 1, 2], num_inference_steps=T)
    # A stub for the toy world's exact detector: "present" iff the image is one of those we choose.
    chosen = {pixels(reference.image(0, None)).tobytes(), pixels(reference.image(1, 0)).tobytes()}
    monkeypatch.setattr(toyworld, "present", lambda image, concept: pixels(image).tobytes() in chosen)
    result = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=[0, 2], seeds=[0, 1, 2], num_inference_steps=T,
                   concept="red circle")
    by_column = {row["column"]: row for row in result.summary()}
    assert by_column["0"]["removal_rate"] == 1.0  # seed 0: present without the negative, gone with it
    assert by_column["0"]["reverse_activation_rate"] == pytest.approx(1 / 2)  # seed 1 of seeds 1, 2
    assert by_column["2"]["reverse_activation_rate"] == 0.0
    assert by_column["none"]["ssim"] == 1.0


def test_object_preservation_from_the_toy_world_detector(tiny_sd, monkeypatch):
    from types import SimpleNamespace

    toyworld = pytest.importorskip("negschedule.toyworld")

    def Object(shape, colour, box):  # what the metrics read of the toy world's objects: name and box
        return SimpleNamespace(name=f"{colour} {shape}", box=box)

    set_scheduler(tiny_sd, "ddim")
    reference = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=[0, 3], seeds=[0], num_inference_steps=T)
    baseline = pixels(reference.image(0, None)).tobytes()
    square, circle = Object("square", "blue", (0, 0, 10, 10)), Object("circle", "red", (12, 12, 30, 30))
    moved = Object("square", "blue", (8, 8, 18, 18))  # IoU with the original square < 0.5

    def detect(image):
        if pixels(image).tobytes() == baseline:
            return [square, circle]
        return [circle] if pixels(image).tobytes() == pixels(reference.image(0, 0)).tobytes() else [moved]

    monkeypatch.setattr(toyworld, "detect", detect)
    monkeypatch.setattr(toyworld, "present", lambda image, name: any(o.name == name for o in detect(image)))
    result = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=[0, 3], seeds=[0], num_inference_steps=T,
                   concept="red circle")
    by_column = {row["column"]: row for row in result.summary()}
    # The blue square is the object to preserve (the red circle is the concept): gone at 0, moved at 3.
    assert by_column["none"]["objects_preserved"] == 1.0
    assert by_column["0"]["objects_preserved"] == 0.0 and by_column["3"]["objects_preserved"] == 0.0
    assert by_column["3"]["removal_rate"] == 1.0 and by_column["0"]["removal_rate"] == 0.0


def test_summary_denominators():
    rows = [
        {"column": "3", "ssim": 0.5, "present": False, "baseline_present": True, "removed": True, "reverse_activated": False, "objects_preserved": None},
        {"column": "3", "ssim": 0.7, "present": True, "baseline_present": True, "removed": False, "reverse_activated": False, "objects_preserved": None},
        {"column": "3", "ssim": 0.9, "present": True, "baseline_present": False, "removed": False, "reverse_activated": True, "objects_preserved": 1.0},
    ]
    (row,) = summarize(rows, ["3"])
    assert row["removal_rate"] == 0.5 and row["reverse_activation_rate"] == 1.0 and row["ssim"] == pytest.approx(0.7)
    assert row["objects_preserved"] == 1.0 and row["n"] == 3


def test_writes_grid_tables_and_report(tiny_sd, tmp_path):
    set_scheduler(tiny_sd, "ddim")
    result = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=range(T), seeds=[0, 1], num_inference_steps=T, out=tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["model_evaluations"] == result.model_evaluations
    assert data["columns"] == ["none", "0", "1", "2", "3"]
    assert len(data["images"]) == 2 * 5 and len(data["summary"]) == 5
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 10
    page = (tmp_path / "report.html").read_text()
    assert "grid.png" in page and "summary.png" in page and str(result.model_evaluations) in page and NEG in page
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > 5 * 128 and grid.height > 2 * 128
    # The first column is the no-negative image, upscaled into its cell.
    first = pixels(result.image(0, None))
    assert np.array_equal(np.asarray(Image.open(tmp_path / data["images"][0]["image"]).convert("RGB")), first)


def test_rerun_in_same_folder_with_other_settings_is_refused(tiny_sd, tmp_path):
    set_scheduler(tiny_sd, "ddim")
    sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=[1], seeds=[0], num_inference_steps=T, out=tmp_path)
    again = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=[1], seeds=[0], num_inference_steps=T, out=tmp_path)
    assert again.computed_units == []
    with pytest.raises(InputError) as err:
        sweep(tiny_sd, prompt=PROMPT, negative_prompt="green", starts=[1], seeds=[0], num_inference_steps=T, out=tmp_path)
    assert err.value.argument == "out"


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(starts=[T + 1]), "starts"),
        (dict(starts=[1, 1]), "starts"),
        (dict(windows=[(3, 2)]), "windows"),
        (dict(seeds=[]), "seeds"),
        (dict(negative_prompt=""), "negative_prompt"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(concept="red circle", detector="owl"), "detector"),
        (dict(num_images_per_prompt=2), "num_images_per_prompt"),
        (dict(batching="fast"), "batching"),
        (dict(not_an_argument=1), "not_an_argument"),
        (dict(guidance_scale_with_negative=0.5), "guidance_scale_with_negative"),
    ],
)
def test_bad_input_names_the_argument(tiny_sd, kwargs, argument):
    call = dict(prompt=PROMPT, negative_prompt=NEG, starts=[1], seeds=[0], num_inference_steps=T)
    call.update(kwargs)
    with pytest.raises(InputError) as err:
        sweep(tiny_sd, **call)
    assert err.value.argument == argument


def test_parse_steps():
    assert parse_steps("0:4", "starts") == [0, 1, 2, 3]
    assert parse_steps("0:10:5,7", "starts") == [0, 5, 7]
    for bad in ("a", "3:1", "1,1", "0:5:0", "-1"):
        with pytest.raises(InputError):
            parse_steps(bad, "starts", 20)


def test_cli_sweep_writes_results_with_model_evaluations(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\n\n# a comment\na green dog\n")
    out = tmp_path / "out"
    code = main(["sweep", "--model", str(tiny_model_dir), "--prompts-file", str(prompts), "--negative-prompt", NEG,
                 "--starts", f"0:{T}", "--window", "1", "3", "--seeds", "0,1", "--steps", str(T), "--out", str(out), "--no-progress"])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["columns"] == ["none", "0", "1", "2", "3", "1-3"]
    # Per unit: trunk T + starts sum(T - k) + the window's own steps: [1, 3) shares steps 1-2 with
    # start 1 and has only step 3 of its own; CFG; 2 prompts x 2 seeds.
    assert data["model_evaluations"] == 4 * 2 * (T + T * (T + 1) // 2 + 1)
    assert (out / "report.html").exists() and (out / "grid.png").exists()


def test_cli_bad_input_exits_2_before_loading(tmp_path, capsys):
    code = main(["sweep", "--model", str(tmp_path / "missing"), "--prompt", PROMPT, "--negative-prompt", NEG,
                 "--starts", "0:30", "--steps", "20", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "starts" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("verb", ["sweep", "removal-curve", "attention"])
def test_cli_refuses_a_gpu_that_is_not_there_before_writing(tmp_path, capsys, verb):
    extra = {"sweep": [], "removal-curve": ["--concept", "moon"], "attention": ["--tokens", "square"]}[verb]
    code = main([verb, "--prompt", PROMPT, "--negative-prompt", NEG, *extra, "--device", "cuda:0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "device='cuda:0'" in err
    assert not (tmp_path / "o").exists()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# Every run a test compares byte for byte goes through the same subprocess set-up: CPU kernels
# reduce in an order that depends on the thread count, so a run in this process (default threads)
# and one in a child with OMP_NUM_THREADS=1 can differ in the last bits of a float.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

# Runs the sweep CLI, but SIGKILLs itself inside the third unit: after its images are written and
# before its record is committed, the worst moment for a resume (files on disk, unit not done).
KILL_IN_THIRD_UNIT = """
import os, signal, sys
from negschedule.experiments.commands import main
from negschedule.experiments.store import ResultStore
commit, calls = ResultStore.commit, []
def killing_commit(self, unit, record):
    calls.append(unit)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    commit(self, unit, record)
ResultStore.commit = killing_commit
sys.exit(main(sys.argv[1:]))
"""


def _cli(argv, code=None):
    script = ["-c", code, *argv] if code else ["-m", "negschedule.experiments.commands", *argv]
    return subprocess.run([sys.executable, *script], env=CHILD_ENV, capture_output=True, text=True, timeout=300)


def test_sigkilled_sweep_resumes_to_identical_results(tiny_model_dir, tmp_path):
    steps = 8
    out = tmp_path / "killed"
    argv = ["sweep", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--negative-prompt", NEG, "--starts", f"0:{steps}",
            "--seeds", "0:8", "--steps", str(steps), "--no-progress"]
    killed = _cli([*argv, "--out", str(out)], code=KILL_IN_THIRD_UNIT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "units").glob("*.json")}
    assert sorted(finished) == ["p000_seed0.json", "p000_seed1.json"]
    assert list((out / "images").glob("p000_seed2_*.png")), "the third unit's images were written before the kill"
    assert not (out / "results.json").exists()

    resumed = _cli([*argv, "--out", str(out)])  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "units").glob("*.json")}
    assert all(after[name] == stamp for name, stamp in finished.items()), "a finished unit was recomputed"
    assert len(after) == 8

    fresh = tmp_path / "fresh"
    assert _cli([*argv, "--out", str(fresh)]).returncode == 0
    assert _files(out) == _files(fresh)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_processes_merge_to_the_single_process_result(tiny_model_dir, tmp_path):
    sweep_args = ["sweep", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--prompt", "a green dog",
                  "--negative-prompt", NEG, "--starts", f"0:{T}", "--seeds", "0:3", "--steps", str(T), "--no-progress"]
    shared = tmp_path / "two"
    # Without GPUs, accelerate's --multi_gpu launcher (torchrun) starts N CPU processes (gloo).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "negschedule.experiments.commands"]
    done = subprocess.run([*launch, *sweep_args, "--out", str(shared)], env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 sampled now" in done.stdout  # process 0 sampled its half of the 6 units
    single = tmp_path / "one"
    assert _cli([*sweep_args, "--out", str(single)]).returncode == 0
    assert _files(shared) == _files(single)


def test_temporary_files_of_a_killed_run_are_cleaned_on_resume(tiny_sd, tmp_path):
    from negschedule.experiments.store import ResultStore, write_bytes_atomic

    set_scheduler(tiny_sd, "ddim")
    kw = dict(prompt=PROMPT, negative_prompt=NEG, starts=[1], seeds=[0], num_inference_steps=T, out=tmp_path)
    sweep(tiny_sd, **kw)
    stale = tmp_path / "images" / ".p000_seed1_1.png.abc.tmp"  # what a kill inside write_bytes_atomic leaves
    stale.write_bytes(b"half a png")
    sweep(tiny_sd, **kw)
    assert not stale.exists()
    write_bytes_atomic(tmp_path / "x.bin", b"1")
    assert (tmp_path / "x.bin").read_bytes() == b"1" and not list(tmp_path.glob(".x.bin*"))
    assert ResultStore(tmp_path).done("p000_seed0")


def test_cfg_off_columns_equal_generate_with_cfg_off(tiny_sd):
    set_scheduler(tiny_sd, "euler")
    result = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=[0, 2], seeds=[0], num_inference_steps=T, cfg_off=True)
    expected = generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=2, cfg_off=True, num_inference_steps=T,
                        generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(pixels(result.image(0, 2)), pixels(expected))
    # No prefix is shared: the no-negative column runs CFG from step 0 (2T), start 0 the negative from
    # step 0 (2T), start 2 two CFG-off steps (1 evaluation each) and then T - 2 CFG steps.
    assert result.model_evaluations == 2 * T + 2 * T + (2 * 1 + 2 * (T - 2))


def test_scale_with_negative_columns_equal_generate(tiny_sd):
    set_scheduler(tiny_sd, "dpmpp_2m")
    result = sweep(tiny_sd, prompt=PROMPT, negative_prompt=NEG, starts=[0, 2], seeds=[0], num_inference_steps=T,
                   guidance_scale_with_negative=10.0)
    for start in (0, 2):
        expected = generate(tiny_sd, prompt=PROMPT, negative_prompt=NEG, negative_start=start, guidance_scale_with_negative=10.0,
                            num_inference_steps=T, generator=torch.Generator().manual_seed(0)).images[0]
        assert np.array_equal(pixels(result.image(0, start)), pixels(expected)), start
    stock = generate(tiny_sd, prompt=PROMPT, num_inference_steps=T, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(pixels(result.image(0, None)), pixels(stock))  # the no-negative column keeps guidance_scale
    assert result.model_evaluations == 2 * (T + T + (T - 2))  # the trunk is still shared


def test_sweep_folders_made_before_the_scale_setting_still_resume(tiny_sd, tmp_path):
    set_scheduler(tiny_sd, "ddim")
    kw = dict(prompt=PROMPT, negative_prompt=NEG, starts=[1], seeds=[0], num_inference_steps=T, out=tmp_path)
    sweep(tiny_sd, **kw)
    assert "guidance_scale_with_negative" not in (tmp_path / "settings.json").read_text()  # as an older folder has it
    assert sweep(tiny_sd, **kw).computed_units == []
    with pytest.raises(InputError) as err:  # another scale is another experiment
        sweep(tiny_sd, guidance_scale_with_negative=9.0, **kw)
    assert err.value.argument == "out"


def test_sdxl_sweep(tiny_sdxl, tmp_path):
    set_scheduler(tiny_sdxl, "euler")
    result = sweep(tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, starts=[0, 2], seeds=[0], num_inference_steps=T,
                   height=32, width=32, out=tmp_path)
    expected = generate(tiny_sdxl, prompt=PROMPT, negative_prompt=NEG, negative_start=2, num_inference_steps=T,
                        height=32, width=32, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(pixels(result.image(0, 2)), pixels(expected))
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["pipeline_class"] == "StableDiffusionXLPipeline"


def test_cli_sweep_with_an_embedding_and_a_lora(tiny_model_dir, tmp_path, capsys):
    """--textual-inversion and --lora reach the sweep's pipeline, and its settings: a rerun with another LoRA weight is refused."""
    from negschedule import load_pipeline

    from .test_models import tiny_lora
    from .test_textual_inversion import save_embedding

    embedding = save_embedding(tmp_path, torch.randn(3, 32, generator=torch.Generator().manual_seed(7)), "kohya.safetensors")
    lora = tiny_lora(tmp_path, "style", seed=1)
    out = tmp_path / "out"
    args = ["sweep", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--negative-prompt", "EasyNegativeV2", "--starts", "0,2",
            "--seeds", "0", "--steps", str(T), "--textual-inversion", f"{embedding}:EasyNegativeV2", "--out", str(out), "--no-progress"]
    assert main([*args, "--lora", f"{lora}:0.5"]) == 0
    pipe = load_pipeline(str(tiny_model_dir), textual_inversions=[(embedding, "EasyNegativeV2")], loras=[(lora, 0.5)])
    pipe.set_progress_bar_config(disable=True)
    expected = sweep(pipe, prompt=PROMPT, negative_prompt="EasyNegativeV2", starts=[0, 2], seeds=[0], num_inference_steps=T)
    data = json.loads((out / "results.json").read_text())
    cells = {cell["column"]: cell["image"] for cell in data["images"]}
    for label, start in (("none", None), ("0", 0), ("2", 2)):
        assert np.array_equal(pixels(Image.open(out / cells[label])), pixels(expected.image(0, start))), label
    settings = data["settings"]
    assert settings["loras"][0][:2] == [str(lora), 0.5] and settings["textual_inversions"][0][1] == "EasyNegativeV2"
    capsys.readouterr()
    assert main([*args, "--lora", f"{lora}:0.8"]) == 2  # other settings into the same folder
    assert "loras" in capsys.readouterr().err


def test_cli_sweep_records_a_precision_other_than_the_default_and_refuses_to_mix(tiny_model_dir, tmp_path, capsys):
    """Pictures differ between precisions: a folder begun in bfloat16 is not resumed in float32 (and the
    CPU default adds nothing to the settings, so folders written before --dtype existed still resume)."""
    out = tmp_path / "out"
    args = ["sweep", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--negative-prompt", NEG, "--starts", "0",
            "--seeds", "0", "--steps", "2", "--out", str(out), "--no-progress"]
    assert main([*args, "--dtype", "bfloat16"]) == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["dtype"] == "bfloat16" and "device" not in settings
    capsys.readouterr()
    assert main(args) == 2
    assert "dtype" in capsys.readouterr().err
    assert main([*args, "--dtype", "bfloat16", "--device", "cpu"]) == 0  # the same settings resume
    plain = tmp_path / "plain"
    assert main([*args[:-3], "--out", str(plain), "--no-progress"]) == 0
    assert not {"dtype", "device"} & set(json.loads((plain / "results.json").read_text())["settings"])
