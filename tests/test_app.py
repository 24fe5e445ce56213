"""The web UI's handlers without a browser: same images as the library, checked names, errors as messages."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch

import negschedule.app as app
from negschedule.app import DEFAULT_MODEL, MODEL_SCHEDULER, ServeConfig, UI
from negschedule.errors import InputError

CORE = dict(
    model=DEFAULT_MODEL,
    scheduler=MODEL_SCHEDULER,
    prompt="a red circle",
    negative_prompt="blue square",
    negative_start=2,
    negative_end=4,  # = steps: "to the last step"
    cfg_off=False,
    steps=4,
    guidance_scale=7.5,
    seed=1,
    start_rule=app.SLIDER_START,
    guidance_scale_with_negative=None,  # the page's empty field
)


def core(**changes):
    """The page's core inputs, in the order the page sends them."""
    return list({**CORE, **changes}.values())


@pytest.fixture(scope="module")
def pipe():
    from negschedule.tiny import build_tiny_sd

    return build_tiny_sd(seed=0)  # our own copy: the UI swaps its scheduler


@pytest.fixture(scope="module")
def ui(pipe):
    return UI(ServeConfig(), default_pipe=pipe)


def library_image(pipe, **kwargs):
    from negschedule import generate

    args = dict(prompt=CORE["prompt"], num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator().manual_seed(1))
    args.update(kwargs)
    return np.asarray(generate(pipe, **args).images[0])


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, value, desc=None, **_):
        self.calls.append((value, desc))


# ---- the handlers give the library's images --------------------------------------------------------------


def test_generate_is_the_library_generate_with_settings_in_the_png(ui, pipe):
    progress = Recorder()
    image, per_step, status = ui.generate(*core(), False, progress=progress)
    assert np.array_equal(np.asarray(image), library_image(pipe, negative_prompt="blue square", negative_start=2))
    assert per_step == []
    params = image.info["parameters"].splitlines()
    assert params[:2] == ["a red circle", "Negative prompt: blue square"]
    assert "Negative start: 2" in params[2] and "Steps: 4" in params[2] and "Seed: 1" in params[2]
    assert "steps 0-1: CFG with the empty prompt · steps 2-3: 'blue square'" in status
    assert progress.calls[-1][0] == (4, 4)  # one report per pass, the last one complete


def test_generate_shows_every_step_with_the_active_negative(ui):
    _, per_step, _ = ui.generate(*core(negative_end=3), True)
    assert [caption for _, caption in per_step] == [
        "0: off", "1: off", "2: 'blue square'", "3: off",
    ]
    assert all(img.size == (32, 32) for img, _ in per_step)


def test_scheduler_menu_builds_from_the_model_own_config(ui, pipe):
    first, _, _ = ui.generate(*core(), False)
    ui.generate(*core(scheduler="euler_a"), False)
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    again, _, _ = ui.generate(*core(), False)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_compare_is_no_negative_then_step_zero_then_step_k(ui, pipe):
    row, images, steps, status = ui.compare(*core(), False)
    assert steps is None
    assert [label for _, label in images] == ["no negative", "negative from step 0", "negative from step 2"]
    expected = [
        library_image(pipe),
        library_image(pipe, negative_prompt="blue square", negative_start=0),
        library_image(pipe, negative_prompt="blue square", negative_start=2),
    ]
    for (img, _), want in zip(images, expected):
        assert np.array_equal(np.asarray(img), want)
    assert row.width == 3 * 256  # labelled_row: 32x32 tiles shown at 256
    assert "3 runs" in status


def test_compare_shows_every_step_of_the_three_runs(ui):
    row, images, steps, _ = ui.compare(*core(), True)
    assert steps.size == (4 * 64, 3 * (22 + 22 + 64))  # 3 runs x 4 steps, each run titled, each tile labelled
    # The runs share their first k=2 steps: the no-negative row and the step-k row agree there, not after.
    grid = np.asarray(steps)
    tile = lambda run, step: grid[run * 108 + 44 : run * 108 + 108, step * 64 : (step + 1) * 64]
    assert np.array_equal(tile(0, 0), tile(2, 0)) and np.array_equal(tile(0, 1), tile(2, 1))
    assert not np.array_equal(tile(0, 3), tile(2, 3))
    assert not np.array_equal(tile(0, 0), tile(1, 0))  # from step 0 the negative acts at once


def test_sweep_by_the_library_equals_the_generate_loop(ui, monkeypatch):
    inputs = core() + ["0:4:2", "0,1"]
    if app.experiment("sweep") is not None:
        grid, status = ui.sweep(*inputs)
        assert "negschedule.experiments.sweep" in status
    else:
        grid = None
    monkeypatch.setattr(app, "experiment", lambda name: None)
    looped, status = ui.sweep(*inputs)
    assert "one generate() call per image" in status and "6 images" in status
    assert looped.size == (3 * 128, 2 * (128 + 22))  # 2 seeds x (no negative + 2 starts)
    if grid is not None:
        assert np.array_equal(np.asarray(grid), np.asarray(looped))


# ---- the auto start: decided while sampling, then shown as the step it chose ------------------------------


def auto_image(pipe, signal, **kwargs):
    from negschedule import generate
    from negschedule.auto import AutoStart, Signal

    args = dict(prompt=CORE["prompt"], negative_prompt="blue square", num_inference_steps=4, guidance_scale=7.5,
                generator=torch.Generator().manual_seed(1), negative_start=AutoStart(signal=Signal(signal)))
    out = generate(pipe, **{**args, **kwargs})
    return np.asarray(out.images[0]), out.negative_start


def test_start_menu_offers_every_auto_signal():
    from negschedule.auto import Signal

    from negschedule.auto import AutoStart

    values = [value for _, value in app.START_RULES]
    assert values[:2] == [app.SLIDER_START, "auto"]  # "auto": the default signal, the model's best rule
    assert sorted({v.partition(":")[0] for v in values[2:]}) == sorted(s.value for s in Signal)
    for value in values[2:]:  # every entry is a setting AutoStart takes
        signal, _, choice = value.partition(":")
        AutoStart(signal=signal, **({"choice": choice} if choice else {}))
    assert "rollout:verified" in values


def test_generate_with_auto_start_is_the_library_auto_and_says_its_step(ui, pipe):
    image, per_step, status = ui.generate(*core(start_rule="alignment"), True)
    want, chosen = auto_image(pipe, "alignment")
    assert np.array_equal(np.asarray(image), want)
    assert np.abs(np.asarray(image).astype(int) - library_image(pipe, negative_prompt="blue square", negative_start=chosen)).max() <= 1
    params = image.info["parameters"]
    assert "Negative start: auto" in params and f"Auto start: {chosen}" in params and "Auto signal: alignment" in params
    assert f"auto (alignment) chose step {chosen}: " in status
    assert [caption for _, caption in per_step] == [f"{i}: {'off' if i < chosen else repr('blue square')}" for i in range(4)]


def test_auto_rollout_shows_each_step_once_though_it_may_go_back(ui, pipe):
    _, per_step, status = ui.generate(*core(start_rule="rollout"), True)
    assert len(per_step) == 4 and "auto (rollout) chose step" in status


def test_verified_rollout_from_the_menu_is_the_library_rule(ui, pipe):
    from negschedule import generate
    from negschedule.auto import AutoStart

    image, _, status = ui.generate(*core(start_rule="rollout:verified"), False)
    out = generate(pipe, **{**{k: CORE[k] for k in ("prompt", "negative_prompt", "guidance_scale")},
                            "num_inference_steps": CORE["steps"], "generator": torch.Generator().manual_seed(1),
                            "negative_start": AutoStart(signal="rollout", choice="verified")})
    assert np.array_equal(np.asarray(image), np.asarray(out.images[0]))
    assert f"auto (rollout, verified) chose step {out.negative_start}: " in status
    assert "Auto choice: verified" in image.info["parameters"]
    grid, status = ui.sweep(*core(start_rule="rollout:verified"), "0:4:2", "0,1")
    assert grid.size == (4 * 128, 2 * (128 + 22)) and "one auto start for all seeds (rollout, verified, per prompt: step" in status
    with pytest.raises(InputError) as err:
        app.page_settings(*core(start_rule="rollout:closest"))
    assert err.value.argument == "start_rule"


def test_compare_with_auto_labels_the_step_it_chose(ui, pipe):
    _, images, _, status = ui.compare(*core(start_rule="alignment"), False)
    want, chosen = auto_image(pipe, "alignment")
    labels = [label for _, label in images]
    assert labels == ["no negative", "negative from step 0", f"negative from step {chosen} (auto, alignment)"]
    assert np.array_equal(np.asarray(images[2][0]), want)
    assert "Negative" not in images[0][0].info["parameters"].splitlines()[1]  # no negative in the no-negative image's text
    assert "Negative start: 0" in images[1][0].info["parameters"] and "Auto" not in images[1][0].info["parameters"]
    assert f"Auto start: {chosen}" in images[2][0].info["parameters"]


def test_sweep_with_auto_adds_its_column(ui, monkeypatch):
    grid, status = ui.sweep(*core(start_rule="alignment"), "0:4:2", "0,1")
    assert grid.size == (4 * 128, 2 * (128 + 22))  # no negative + 2 starts + auto
    assert "then 2 with the auto start (alignment)" in status


def test_sweep_with_the_rollout_shares_one_start_across_seeds(ui, pipe):
    from negschedule.auto import AutoStart
    from negschedule.guided import sample_guided

    grid, status = ui.sweep(*core(start_rule="rollout"), "0:4:2", "0,1")
    assert grid.size == (4 * 128, 2 * (128 + 22))
    # The column is the library's per-prompt start for these seeds.
    result = sample_guided(pipe, "cfg", [0, 1], negative_prompt=CORE["negative_prompt"], negative_start="auto",
                           auto=AutoStart(signal="rollout", per_prompt=True), prompt=CORE["prompt"],
                           num_inference_steps=CORE["steps"], guidance_scale=CORE["guidance_scale"])
    assert f"one auto start for all seeds (rollout, per prompt: step {result.starts[0]})" in status


def test_heatmaps_with_auto_use_the_step_it_chose(ui, pipe):
    if app.experiment("attention_maps") is None:
        pytest.skip("negschedule.attention is not installed")
    _, chosen = auto_image(pipe, "alignment", generator=torch.Generator().manual_seed(1))
    _, status = ui.heatmaps(*core(start_rule="alignment"), "circle", "square")
    assert f"auto (alignment) chose step {chosen}" in status


@pytest.mark.parametrize(
    "changes, argument",
    [
        (dict(start_rule="vibes"), "start_rule"),
        (dict(start_rule="detector", negative_prompt="glasses"), "auto_signal"),  # the toy detector cannot test it
        (dict(start_rule="attention", cfg_off=True), "cfg_off"),
    ],
)
def test_bad_auto_input_is_refused_before_sampling(ui, changes, argument):
    with pytest.raises(InputError, match=argument):
        app.page_settings(*core(**changes))


def test_sweep_refuses_work_beyond_its_limit(ui):
    with pytest.raises(InputError, match="starts"):
        ui.sweep(*core(steps=100, negative_end=100), "0:100", "0:10")


@pytest.mark.parametrize(
    "text, steps, expected",
    [("0:4", 4, [0, 1, 2, 3]), ("0:20:5", 20, [0, 5, 10, 15]), ("3, 1,3", 4, [3, 1]), ("4", 4, [4])],
)
def test_parse_starts(text, steps, expected):
    assert app.parse_starts(text, steps) == expected


@pytest.mark.parametrize("text", ["", "a:b", "0:4:0", "5", "-1", "1:2:3:4", "0:1000000000000", "-5:2"])
def test_parse_starts_refuses(text):
    with pytest.raises(InputError, match="starts"):
        app.parse_starts(text, 4)


@pytest.mark.parametrize("text", ["", "x", "-1", "0:1000000000000", ",".join(map(str, range(65)))])
def test_parse_seeds_refuses(text):
    with pytest.raises(InputError, match="seeds"):
        app.parse_seeds(text)


# ---- bad input is an InputError naming the argument ------------------------------------------------------


@pytest.mark.parametrize(
    "changes, argument",
    [
        (dict(prompt="  "), "prompt"),
        (dict(steps=0), "steps"),
        (dict(steps=None), "steps"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=float("inf")), "seed"),
        (dict(steps=float("nan")), "steps"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(guidance_scale="x"), "guidance_scale"),
        (dict(scheduler="nope"), "scheduler"),
        (dict(negative_start=9), "negative_start"),
        (dict(guidance_scale=1.0), "guidance_scale"),
        (dict(negative_prompt="[blue square"), "negative_prompt"),
        (dict(guidance_scale_with_negative=1.0), "guidance_scale_with_negative"),
        (dict(guidance_scale_with_negative="strong"), "guidance_scale_with_negative"),
        (dict(guidance_scale_with_negative=float("inf")), "guidance_scale_with_negative"),
    ],
)
def test_bad_input_is_refused_with_its_name(ui, changes, argument):
    with pytest.raises(InputError, match=argument):
        ui.generate(*core(**changes), False)


def test_scale_with_negative_through_the_page_is_the_library_call(ui, pipe):
    image, _, status = ui.generate(*core(guidance_scale_with_negative=11), False)
    assert np.array_equal(np.asarray(image), library_image(pipe, negative_prompt="blue square", negative_start=2,
                                                           guidance_scale_with_negative=11.0))
    assert "CFG scale with negative: 11.0" in image.info["parameters"]
    assert "steps 2-3: 'blue square' at CFG 11" in status
    _, images, _, _ = ui.compare(*core(guidance_scale_with_negative=11), False)
    assert np.array_equal(np.asarray(images[0][0]), library_image(pipe))  # no negative: no scale to change
    assert np.array_equal(np.asarray(images[1][0]), library_image(pipe, negative_prompt="blue square", negative_start=0,
                                                                  guidance_scale_with_negative=11.0))
    # Without a negative the field is ignored, as the sliders are.
    plain, _, _ = ui.generate(*core(negative_prompt="", guidance_scale_with_negative=11), False)
    assert np.array_equal(np.asarray(plain), library_image(pipe))
    with pytest.raises(InputError, match="guidance_scale_with_negative"):
        ui.heatmaps(*core(guidance_scale_with_negative=11), "circle", "")


def test_compare_and_sweep_need_a_negative(ui):
    with pytest.raises(InputError, match="negative_prompt"):
        ui.compare(*core(negative_prompt=""), False)
    with pytest.raises(InputError, match="negative_prompt"):
        ui.sweep(*core(negative_prompt=""), "0:2", "0")


def test_experiment_tabs_say_what_is_missing(ui, monkeypatch):
    monkeypatch.setattr(app, "experiment", lambda name: None)
    image, status = ui.heatmaps(*core(), "circle", "square")
    assert image is None and "negschedule.attention.attention_maps" in status
    image, status = ui.removal_curve(*core(), "", "0")
    assert image is None and "negschedule.experiments.removal.removal_curve" in status


def test_heatmaps_are_one_strip_per_word(ui):
    if app.experiment("attention_maps") is None:
        pytest.skip("negschedule.attention is not installed")
    image, status = ui.heatmaps(*core(), "circle, red", "square")
    strip_height = 96 + 18  # attention.render_strip: a 96-pixel cell per step under a step-number bar
    assert image.height == 3 * strip_height
    assert "+circle, +red, -square" in status and "steps 2-3: 'blue square'" in status
    with pytest.raises(InputError, match="tokens"):
        ui.heatmaps(*core(), "dog", "")
    with pytest.raises(InputError, match="tokens"):
        ui.heatmaps(*core(), " , ", "")
    with pytest.raises(InputError, match="cfg_off"):
        ui.heatmaps(*core(cfg_off=True), "circle", "")


def test_removal_curve_plots_and_reports_its_cost(ui):
    if app.experiment("removal_curve") is None:
        pytest.skip("negschedule.experiments.removal is not installed")
    image, status = ui.removal_curve(*core(), "blue square", "0,1")
    assert image.width > 100 and image.height > 100
    assert "Concept 'blue square'" in status and "Critical step" in status and "model evaluations" in status
    if "absent without the negative for seeds [0, 1]" in status:  # the tiny pipeline draws noise
        assert "Critical step: None" in status
    with pytest.raises(InputError, match="negative_prompt"):
        ui.removal_curve(*core(negative_prompt=""), "", "0")
    with pytest.raises(InputError, match="seeds"):
        ui.removal_curve(*core(), "", "x")


# ---- nothing from the page reaches the file system unchecked ---------------------------------------------

ESCAPES = [
    "../../etc",
    "..",
    ".",
    "/etc",
    "/etc/passwd",
    "/",
    "tiny/../../etc",
    "tiny/",
    "./tiny",
    "~/tiny",
    "..\\..\\etc",
    ".hidden",
    "tiny\x00",
    "%2e%2e%2fetc",
    "tiny/model_index.json",
    "a" * 300,
    "tiny\n",
    123,
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, pipe):
    root = tmp_path_factory.mktemp("models")
    pipe.save_pretrained(root / "tiny")
    (root / "not-a-model").mkdir()
    outside = tmp_path_factory.mktemp("outside")
    pipe.save_pretrained(outside / "elsewhere")
    os.symlink(outside / "elsewhere", root / "link-out")  # a model folder, but outside the root
    return root


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything is loaded: refused names must be refused before the file system is read."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"load_pipeline called with {args} {kwargs}")

    monkeypatch.setattr("negschedule.models.load_pipeline", refuse)


@pytest.mark.parametrize("name", ESCAPES + ["link-out", "not-a-model", "missing"])
def test_model_names_that_leave_the_models_dir_are_refused(pipe, models_dir, no_loading, name):
    ui = UI(ServeConfig(models_dir=models_dir), default_pipe=pipe)
    with pytest.raises(InputError, match="model"):
        app.resolve_model(name, models_dir)
    with pytest.raises(InputError, match="model"):
        ui.generate(*core(model=name), False)


@pytest.mark.parametrize("name", ["tiny", "../../etc", "/etc"])
def test_without_models_dir_only_the_default_loads(pipe, no_loading, name):
    ui = UI(ServeConfig(), default_pipe=pipe)
    assert ui.model_choices() == [DEFAULT_MODEL]
    with pytest.raises(InputError, match="--models-dir"):
        ui.generate(*core(model=name), False)


def test_a_model_in_the_models_dir_loads_and_draws_like_its_source(pipe, models_dir):
    ui = UI(ServeConfig(models_dir=models_dir), default_pipe=pipe)
    assert ui.model_choices() == [DEFAULT_MODEL, "tiny"]  # not the symlink out, not the folder without a model
    image, _, _ = ui.generate(*core(model="tiny"), False)
    assert np.array_equal(np.asarray(image), library_image(pipe, negative_prompt="blue square", negative_start=2))


@pytest.mark.parametrize("name", ESCAPES + ["x.txt", "x.png.exe", "", None])
def test_output_names_that_leave_the_outputs_dir_are_refused(tmp_path, name):
    outputs = tmp_path / "out"
    outputs.mkdir()
    with pytest.raises(InputError, match="file_name"):
        app.output_path(outputs, name)
    assert list(tmp_path.iterdir()) == [outputs] and not any(outputs.iterdir())


def test_save_writes_a_png_with_settings_and_never_overwrites(pipe, tmp_path):
    from PIL import Image

    ui = UI(ServeConfig(outputs_dir=tmp_path), default_pipe=pipe)
    image, _, _ = ui.generate(*core(), False)
    assert "saved pizza.png" in ui.save(image, "pizza")
    assert Image.open(tmp_path / "pizza.png").text["parameters"] == image.info["parameters"]
    with pytest.raises(InputError, match="already exists"):
        ui.save(image, "pizza.png")
    with pytest.raises(InputError, match="--outputs-dir"):
        UI(ServeConfig(), default_pipe=pipe).save(image, "pizza2.png")


# ---- the Gradio side and the serve verb --------------------------------------------------------------------


def test_failures_come_back_as_page_messages():
    gr = pytest.importorskip("gradio")

    def bad_input(value, progress):
        raise InputError("negative_prompt", value, "unbalanced [")

    def crash(value, progress):
        raise RuntimeError("boom\nsecond line")

    with pytest.raises(gr.Error, match=r"negative_prompt='\[x': unbalanced \["):
        app._page_errors(bad_input, 1)("[x", None)
    with pytest.raises(gr.Error, match="RuntimeError: boom"):
        app._page_errors(crash, 1)("x", None)


def test_handlers_get_gradio_progress():
    gr = pytest.importorskip("gradio")
    from gradio.helpers import special_args

    handler = app._page_errors(lambda a, b, progress: None, 2)
    inputs, progress_index, *_ = special_args(handler, inputs=["a", "b"])
    assert progress_index == 2 and isinstance(inputs[2], gr.Progress)


def test_the_page_builds(ui):
    pytest.importorskip("gradio")
    demo = app.build_app(ui)
    assert demo.title == "negschedule"


def parse_serve(*argv):
    parser = argparse.ArgumentParser()
    app.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_binds_loopback_unless_asked(monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_serve()
    assert (args.host, args.port, args.models_dir, args.outputs_dir) == ("127.0.0.1", 7860, None, None)
    assert parse_serve("--host", "0.0.0.0", "--port", "8000").host == "0.0.0.0"

    launched = {}

    class FakeDemo:
        def launch(self, **kwargs):
            launched.update(kwargs)

    monkeypatch.setattr(app.UI, "preload", lambda self: None)
    monkeypatch.setattr(app, "build_app", lambda ui: FakeDemo())
    assert app.cmd_serve(parse_serve("--port", "8123", "--models-dir", str(tmp_path))) == 0
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 8123
    assert launched["share"] is False


def test_models_load_on_the_device_and_dtype_served(pipe, models_dir, monkeypatch):
    seen = {}

    def fake_load(model, **kwargs):
        seen.update(kwargs, model=model)
        return pipe

    monkeypatch.setattr("negschedule.models.load_pipeline", fake_load)
    ui = UI(ServeConfig(models_dir=models_dir, device="cpu", dtype="float32"), default_pipe=pipe)
    ui.generate(*core(model="tiny"), False)
    assert seen == {"model": str((models_dir / "tiny").resolve()), "device": "cpu", "torch_dtype": "float32"}
    assert ui.runs_on() == "cpu, float32"
    assert UI(ServeConfig(), default_pipe=pipe).runs_on() == "cpu, as stored"  # auto, where the tests hide any GPU


@pytest.mark.parametrize(
    "argv, argument",
    [
        (["--port", "0"], "port"),
        (["--models-dir", "/no/such/dir"], "models_dir"),
        (["--outputs-dir", "/no/such"], "outputs_dir"),
        (["--device", "nope"], "device"),
        (["--dtype", "float17"], "dtype"),
        (["--dtype", "int8"], "dtype"),
    ],
)
def test_serve_refuses_bad_flags(argv, argument):
    with pytest.raises(InputError, match=argument):
        app.cmd_serve(parse_serve(*argv))


def test_menu_auto_runs_the_models_best_rule(ui, pipe):
    # On a model whose pictures no detector reads (this tiny one) the default is the attention rule ...
    image, _, status = ui.generate(*core(start_rule="auto"), False)
    want, chosen = auto_image(pipe, "attention")
    assert np.array_equal(np.asarray(image), want) and f"auto (the model's best rule) chose step {chosen}: " in status
    assert "Auto signal" not in image.info["parameters"]  # none named: the default
    grid, status = ui.sweep(*core(start_rule="auto"), "0:4:2", "0,1")
    assert "then 2 with the auto start (the model's best rule)" in status  # one start per seed
    # ... and on the toy world, with a negative its detector reads, the look-ahead shared by the seeds.
    from negschedule import load_pipeline
    from negschedule.auto import AutoStart
    from negschedule.guided import sample_guided

    toy = load_pipeline()
    toy_ui = UI(ServeConfig(), default_pipe=toy)
    night = dict(prompt="night, a red square", negative_prompt="moon")
    grid, status = toy_ui.sweep(*core(start_rule="auto", **night), "0:4:2", "0,1")
    result = sample_guided(toy, "cfg", [0, 1], negative_start="auto", auto=AutoStart(signal="rollout", per_prompt=True),
                           num_inference_steps=CORE["steps"], guidance_scale=CORE["guidance_scale"], **night)
    assert f"one auto start for all seeds (the model's best rule, per prompt: step {result.starts[0]})" in status
