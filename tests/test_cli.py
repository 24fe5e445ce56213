"""The command line: outputs, PNG metadata, progress on stderr, and bad input (exit 2, one line, no file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from negschedule.cli import main

PICTURE = str(Path(__file__).resolve().parents[1] / "docs" / "img" / "toyworld_scenes.png")  # any picture on disk


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "negschedule.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_generate_writes_png_with_a1111_parameters(tmp_path):
    out = tmp_path / "pizza.png"
    proc = run_cli(
        "generate", "--prompt", "girl eating pizza", "--negative-prompt", "glasses", "--negative-start", "2",
        "--steps", "4", "--seed", "1234", "--scheduler", "euler_a", "--out", str(out), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "4/4" in proc.stderr  # the pipeline's progress bar, on stderr
    assert "StableDiffusionPipeline on cpu, float32" in proc.stderr  # where it ran (the tests hide any GPU)
    params = Image.open(out).text["parameters"]
    lines = params.splitlines()
    assert lines[0] == "girl eating pizza"
    assert lines[1] == "Negative prompt: glasses"
    for field in ("Steps: 4", "Sampler: euler_a", "CFG scale: 7.5", "Seed: 1234", "Negative start: 2", "Model: negschedule-toyworld", "negschedule: ", "diffusers: "):
        assert field in lines[2]
    assert "assets" not in params  # the default model by name, not by this machine's path


def test_compare_is_three_labelled_tiles_and_matches_generate(tmp_path):
    common = ["--prompt", "a cat", "--negative-prompt", "dog", "--steps", "3", "--seed", "7"]
    assert main(["compare", *common, "--negative-start", "1", "--out", str(tmp_path / "cmp.png")]) == 0
    assert main(["generate", *common, "--negative-start", "1", "--out", str(tmp_path / "k.png")]) == 0
    row = Image.open(tmp_path / "cmp.png").convert("RGB")
    single = Image.open(tmp_path / "k.png").convert("RGB")
    tile = row.width // 3
    assert row.width == 3 * tile and tile % single.width == 0
    factor = tile // single.width
    # The third tile is the negative-from-step-k image, upscaled with nearest neighbour.
    third = row.crop((2 * tile, row.height - single.height * factor, 3 * tile, row.height))
    assert np.array_equal(np.asarray(third.resize(single.size, Image.NEAREST)), np.asarray(single))


def test_compare_with_a_scale_with_negative(tmp_path):
    common = ["--prompt", "a cat", "--negative-prompt", "dog", "--steps", "3", "--seed", "7", "--guidance-scale-with-negative", "11"]
    assert main(["compare", *common, "--negative-start", "1", "--out", str(tmp_path / "cmp.png")]) == 0
    assert main(["generate", *common, "--negative-start", "1", "--out", str(tmp_path / "k.png")]) == 0
    assert main(["generate", "--prompt", "a cat", "--steps", "3", "--seed", "7", "--out", str(tmp_path / "none.png")]) == 0
    row, params = Image.open(tmp_path / "cmp.png").convert("RGB"), Image.open(tmp_path / "cmp.png").text["parameters"]
    assert "Comparison: no negative | negative from step 0 at CFG 11 | negative from step 1 at CFG 11" in params
    tile = row.width // 3
    for index, name in ((0, "none.png"), (2, "k.png")):  # the first tile has no negative, so no scale to change
        single = Image.open(tmp_path / name).convert("RGB")
        factor = tile // single.width
        crop = row.crop((index * tile, row.height - single.height * factor, (index + 1) * tile, row.height))
        assert np.array_equal(np.asarray(crop.resize(single.size, Image.NEAREST)), np.asarray(single)), name


def test_compare_with_auto_labels_the_step_it_chose(tmp_path):
    common = ["--prompt", "a cat", "--negative-prompt", "dog", "--steps", "4", "--seed", "7", "--negative-start", "auto", "--auto-signal", "alignment"]
    assert main(["compare", *common, "--out", str(tmp_path / "cmp.png")]) == 0
    assert main(["generate", *common, "--out", str(tmp_path / "auto.png")]) == 0
    chosen = Image.open(tmp_path / "auto.png").text["parameters"].split("Auto start: ")[1].split(",")[0]
    row = Image.open(tmp_path / "cmp.png")
    assert f"negative from step {chosen} (auto)" in row.text["parameters"]
    single = Image.open(tmp_path / "auto.png").convert("RGB")
    tile = row.width // 3
    third = row.convert("RGB").crop((2 * tile, row.height - tile, 3 * tile, row.height))
    assert np.array_equal(np.asarray(third.resize(single.size, Image.NEAREST)), np.asarray(single))


@pytest.mark.parametrize(
    "args, argument",
    [
        (["--negative-prompt", "g", "--negative-start", "30", "--steps", "20"], "negative_start"),
        (["--negative-prompt", "g", "--negative-start", "1.5"], "negative_start"),
        (["--negative-prompt", "g", "--negative-start", "5", "--negative-end", "5"], "negative_end"),
        (["--negative-prompt", "[:glasses:0.2"], "negative_prompt"),
        (["--scheduler", "dpm_fast"], "scheduler"),
        (["--model", "/no/such/model"], "model"),
        (["--steps", "0"], "steps"),
        (["--negative-prompt", "g", "--guidance-scale", "1"], "guidance_scale"),
        (["--negative-prompt", "g", "--negative-prompt-2", "h"], "negative_prompt_2"),  # the toy model is SD 1.x
        (["--negative-prompt", "moon", "--negative-start", "auto", "--auto-signal", "vibes"], "auto_signal"),
        (["--negative-prompt", "moon", "--negative-start", "auto", "--auto-max-start", "1.5"], "auto_max_start"),
        (["--negative-prompt", "moon", "--negative-start", "2", "--auto-signal", "rollout"], "auto_signal"),  # needs auto
        (["--negative-prompt", "moon", "--negative-start", "auto", "--auto-signal", "rollout", "--auto-choice", "closest"], "auto_choice"),
        (["--negative-prompt", "moon", "--negative-start", "auto", "--auto-choice", "verified"], "auto_choice"),  # attention has no search
        (["--negative-prompt", "glasses", "--negative-start", "auto", "--auto-signal", "detector"], "auto_signal"),  # no toy word
        (["--negative-prompt", "g", "--negative-start", "percent:2"], "negative_start"),
        (["--negative-prompt", "g", "--negative-end", "sigma:abc"], "negative_end"),
        (["--lora", "/no/such/lora.safetensors:0.5"], "loras"),
        (["--clip-skip", "0"], "clip_skip"),
        (["--clip-skip", "2"], "clip_skip"),  # the toy model's text encoder has 2 layers
        (["--init-image", "/no/such/picture.png"], "init_image"),
        (["--init-image", __file__], "init_image"),  # not a picture
        (["--strength", "0.5"], "strength"),  # needs --init-image
        (["--init-image", PICTURE, "--strength", "1.5"], "strength"),
        (["--init-image", PICTURE, "--strength", "0.04", "--steps", "20"], "strength"),  # int(0.8) = 0 steps
        (["--init-image", PICTURE, "--negative-prompt", "g", "--guidance", "perp_neg"], "init_image"),
        (["--init-image", PICTURE, "--width", "64"], "width"),
        (["--init-image", PICTURE, "--negative-prompt", "g", "--negative-start", "percent:0.2"], "negative_start"),
        (["--init-image", PICTURE, "--negative-prompt", "g", "--negative-window", "h", "sigma:3", "none"], "negative_start"),
        (["--device", "cuda"], "device"),  # the tests hide any GPU (conftest): as on a machine without one
        (["--device", "gpu"], "device"),
        (["--dtype", "float17"], "dtype"),
        (["--dtype", "int8"], "dtype"),
        (["--negative-prompt", "g", "--negative-start", "2", "--guidance-scale-with-negative", "1"], "guidance_scale_with_negative"),
        (["--negative-prompt", "g", "--guidance-scale-with-negative", "nan"], "guidance_scale_with_negative"),
        (["--guidance-scale-with-negative", "9"], "guidance_scale_with_negative"),  # no negative to act with
        (["--negative-prompt", "g", "--guidance", "perp_neg", "--guidance-scale-with-negative", "9"], "guidance_scale_with_negative"),
    ],
)
def test_bad_input_exit_2_one_line_no_file(tmp_path, capsys, args, argument):
    out = tmp_path / "x.png"
    code = main(["generate", "--prompt", "p", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and f"{argument}=" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("choice", [None, "verified"])
def test_auto_settings_on_the_command_line(tmp_path, capsys, choice):
    """--auto-signal / --auto-max-start / --auto-choice reach AutoStart: a detector-read rollout on the toy world, its start within the cap."""
    common = ["--prompt", "night, a red circle", "--negative-prompt", "moon", "--negative-start", "auto", "--steps", "10", "--seed", "3"]
    extra = ["--auto-choice", choice] if choice else []
    assert main(["generate", *common, "--auto-signal", "rollout", "--auto-max-start", "0.3", *extra, "--out", str(tmp_path / "r.png")]) == 0
    fields = Image.open(tmp_path / "r.png").text["parameters"].splitlines()[2]
    start = int(fields.split("Auto start: ")[1].split(",")[0])
    assert 0 <= start <= 3 and "Auto signal: rollout" in fields and "Auto max start: 0.3" in fields
    assert ("Auto choice: verified" in fields) == (choice == "verified")
    # The terminal hears the chosen step too (stderr; stdout is the path alone).
    captured = capsys.readouterr()
    assert f"auto started the negative at step {start} of 10" in captured.err
    assert captured.out.strip() == str(tmp_path / "r.png")
    # The same start given as a number is the same image: the flags changed the rule, nothing else.
    fixed = [*common[:5], str(start), *common[6:]]
    assert main(["generate", *fixed, "--out", str(tmp_path / "k.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "r.png")), np.asarray(Image.open(tmp_path / "k.png")))


@pytest.mark.parametrize("args", [["--auto-max-start", "abc"], ["--guidance-scale", "abc"], []])
def test_argparse_errors_are_one_line(tmp_path, capsys, args):
    """A value of the wrong type, or a missing --out, is argparse's own error: one line too, exit 2."""
    out = ["--out", str(tmp_path / "x.png")] if args else []
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--prompt", "p", *args, *out])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("negschedule generate: error: ") and (args[0] if args else "--out") in err
    assert list(tmp_path.iterdir()) == []


def test_output_in_missing_folder(tmp_path, capsys):
    assert main(["generate", "--prompt", "p", "--out", str(tmp_path / "nope" / "x.png")]) == 2
    assert "out=" in capsys.readouterr().err


def test_guidance_scale_message_says_cfg_is_off(capsys, tmp_path):
    main(["generate", "--prompt", "p", "--negative-prompt", "g", "--guidance-scale", "0.5", "--out", str(tmp_path / "x.png")])
    assert "CFG is off" in capsys.readouterr().err


def test_corrupt_safetensors_model(tmp_path, capsys, tiny_sd):
    config = tmp_path / "config"
    tiny_sd.save_pretrained(config)
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    out = tmp_path / "x.png"
    assert main(["generate", "--prompt", "p", "--model", str(bad), "--config", str(config), "--out", str(out)]) == 2
    assert "model=" in capsys.readouterr().err and not out.exists()


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = run_cli("generate", "--prompt", "p", "--negative-prompt", "g", "--negative-start", "0.2.1", "--out", "x.png", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "negative_start=" in proc.stderr


@pytest.mark.parametrize(
    "args, argument",
    [
        (["--n", "0"], "--n="),
        (["--starts", "0,30"], "--starts="),
        (["--guidance-scale", "1"], "--guidance-scale="),
        (["--starts", "x"], "--starts"),
    ],
)
def test_toy_eval_bad_input_exit_2_before_any_folder(tmp_path, capsys, args, argument):
    out = tmp_path / "eval"
    try:
        code = main(["toy", "eval", *args, "--out", str(out)])
    except SystemExit as stop:  # a value of the wrong type is argparse's own error
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert argument in err and "Traceback" not in err
    assert not out.exists()


def test_sdxl_negative_prompt_2_on_the_command_line(tmp_path, capsys):
    from negschedule.tiny import build_tiny_sdxl

    build_tiny_sdxl(seed=0).save_pretrained(tmp_path / "xl")
    common = ["--prompt", "a cat", "--negative-prompt", "dog", "--negative-start", "1", "--steps", "3", "--model", str(tmp_path / "xl")]
    assert main(["generate", *common, "--negative-prompt-2", "hat", "--out", str(tmp_path / "two.png")]) == 0
    assert main(["generate", *common, "--out", str(tmp_path / "one.png")]) == 0
    two, one = Image.open(tmp_path / "two.png"), Image.open(tmp_path / "one.png")
    assert "Negative prompt 2: hat" in two.text["parameters"]
    assert not np.array_equal(np.asarray(two), np.asarray(one))  # the second encoder's negative acts
    # compare's no-negative tile must not keep the second negative either
    assert main(["compare", *common, "--negative-prompt-2", "hat", "--out", str(tmp_path / "cmp.png")]) == 0


def test_help_shows_descriptions_examples_and_real_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    top = capsys.readouterr().out
    assert "examples:" in top and "negschedule compare --prompt" in top

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    gen = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "One image with a timed negative prompt" in gen
    assert "num_inference_steps (default: 20)" in gen
    assert "torch generator seed (default: 0)" in gen  # 0 is a default, not "unset"
    assert "(default: None)" not in gen and "(default: False)" not in gen and "(default: [])" not in gen

    # A verb registered by another module opens with its one-line help too.
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "Critical-step sweep: the negative starting at every step" in " ".join(capsys.readouterr().out.split())


def test_image_to_image_on_the_command_line(tmp_path):
    """--init-image/--strength: the toy model's img2img form, timed as generate() times it, with A1111's strength field."""
    import torch

    from negschedule import generate, load_pipeline
    from negschedule.models import image_to_image
    from negschedule.toyworld import world

    picture, caption = world.sample(11)
    picture.save(tmp_path / "init.png")
    common = ["--prompt", caption, "--negative-prompt", "moon", "--steps", "10", "--seed", "5",
              "--init-image", str(tmp_path / "init.png"), "--strength", "0.6"]
    assert main(["generate", *common, "--negative-start", "2", "--out", str(tmp_path / "k2.png")]) == 0
    fields = Image.open(tmp_path / "k2.png").text["parameters"].splitlines()[2]
    assert "Denoising strength: 0.6" in fields and f"Size: {picture.width}x{picture.height}" in fields

    pipe = image_to_image(load_pipeline())
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    call = dict(prompt=caption, image=picture, strength=0.6, num_inference_steps=10)
    library = generate(pipe, negative_prompt="moon", negative_start=2, generator=torch.Generator().manual_seed(5), **call).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "k2.png").convert("RGB")), np.asarray(library))
    # From step 0 it is the stock img2img pipeline with the negative prompt, bit for bit.
    assert main(["generate", *common, "--negative-start", "0", "--out", str(tmp_path / "k0.png")]) == 0
    stock = pipe(negative_prompt="moon", generator=torch.Generator().manual_seed(5), **call).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "k0.png").convert("RGB")), np.asarray(stock))
    assert not np.array_equal(np.asarray(stock), np.asarray(library))


def test_noise_level_start_on_the_command_line(tmp_path):
    """--negative-start percent:P is generate(negative_start=TimestepPercent(P)), recorded as written."""
    import torch

    from negschedule import TimestepPercent, generate, load_pipeline

    common = ["--prompt", "night, a red circle", "--negative-prompt", "moon", "--steps", "10", "--seed", "2"]
    assert main(["generate", *common, "--negative-start", "percent:0.3", "--out", str(tmp_path / "p.png")]) == 0
    assert 'Negative start: "percent:0.3"' in Image.open(tmp_path / "p.png").text["parameters"]
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = generate(pipe, prompt="night, a red circle", negative_prompt="moon", negative_start=TimestepPercent(0.3),
                     num_inference_steps=10, generator=torch.Generator().manual_seed(2)).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png").convert("RGB")), np.asarray(image))


def test_clip_skip_on_the_command_line(tmp_path):
    """--clip-skip N is diffusers' clip_skip=N; the PNG says A1111's "Clip skip: N+1"."""
    import torch

    from negschedule import generate, load_pipeline

    common = ["--prompt", "a red circle and a blue square", "--negative-prompt", "blue square", "--negative-start", "2",
              "--steps", "6", "--seed", "4"]
    assert main(["generate", *common, "--clip-skip", "1", "--out", str(tmp_path / "skip.png")]) == 0
    assert main(["generate", *common, "--out", str(tmp_path / "last.png")]) == 0
    skipped = Image.open(tmp_path / "skip.png")
    assert "Clip skip: 2" in skipped.text["parameters"] and "Clip skip" not in Image.open(tmp_path / "last.png").text["parameters"]
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    image = generate(pipe, prompt="a red circle and a blue square", negative_prompt="blue square", negative_start=2,
                     num_inference_steps=6, clip_skip=1, generator=torch.Generator().manual_seed(4)).images[0]
    assert np.array_equal(np.asarray(skipped.convert("RGB")), np.asarray(image))
    assert not np.array_equal(np.asarray(skipped.convert("RGB")), np.asarray(Image.open(tmp_path / "last.png").convert("RGB")))


def test_lora_on_the_command_line(tmp_path, capsys, tiny_sd):
    """--lora PATH:WEIGHT loads the file as an adapter at that weight and records it; a LoRA for another model is one clear error."""
    import torch

    from negschedule import generate, load_pipeline
    from negschedule.schedulers import set_scheduler

    from .test_models import tiny_lora

    set_scheduler(tiny_sd, "ddim")
    tiny_sd.save_pretrained(tmp_path / "model")
    lora = tiny_lora(tmp_path, "cat_style", seed=1)
    common = ["--model", str(tmp_path / "model"), "--prompt", "a red cat", "--negative-prompt", "blue hat", "--negative-start", "1",
              "--steps", "4", "--seed", "2"]
    assert main(["generate", *common, "--lora", f"{lora}:0.6", "--out", str(tmp_path / "lora.png")]) == 0
    image = Image.open(tmp_path / "lora.png")
    assert 'Lora: "cat_style:0.6"' in image.text["parameters"]
    pipe = load_pipeline(str(tmp_path / "model"), loras=[(lora, 0.6)])
    pipe.set_progress_bar_config(disable=True)
    expected = generate(pipe, prompt="a red cat", negative_prompt="blue hat", negative_start=1, num_inference_steps=4,
                        generator=torch.Generator().manual_seed(2)).images[0]
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
    capsys.readouterr()
    # The embedded toy model has other layers: the file does not fit it.
    code = main(["generate", "--prompt", "p", "--lora", str(lora), "--out", str(tmp_path / "toy.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("negschedule generate: error: loras=") and "not a LoRA" in err[-1]
    assert not (tmp_path / "toy.png").exists() and not any("Traceback" in line for line in err)


def _read_like_a1111(text: str) -> dict[str, str]:
    """The last line of an infotext read the way A1111's "PNG Info" reads it: a key of word characters,
    spaces, '-' and '/', then either a JSON string or everything up to the next comma."""
    import json
    import re

    pair = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    return {k: json.loads(v) if v.startswith('"') and v.endswith('"') else v for k, v in pair.findall(text.splitlines()[-1])}


def test_png_parameters_read_back_as_a1111_reads_them(tmp_path):
    """Values with commas or colons (a noise-level start, a window list, a LoRA weight) are quoted as A1111 quotes them."""
    out = tmp_path / "w.png"
    assert main(["generate", "--prompt", "a red circle", "--negative-prompt", "blue square", "--negative-start", "percent:0.2",
                 "--negative-window", "moon", "0", "3", "--steps", "6", "--out", str(out)]) == 0
    fields = _read_like_a1111(Image.open(out).text["parameters"])
    assert fields["Negative start"] == "percent:0.2" and fields["Negative windows"] == "moon [0, 3)"
    assert fields["Steps"] == "6" and fields["CFG scale"] == "7.5" and fields["Seed"] == "0"


def test_from_png_remakes_an_image_and_typed_flags_win(tmp_path):
    settings = ["--prompt", "a red circle and a blue square", "--negative-prompt", "blue square", "--negative-start", "3",
                "--steps", "8", "--seed", "5", "--scheduler", "euler_a", "--guidance-scale", "6", "--clip-skip", "1",
                "--negative-window", "moon", "0", "4", "--guidance-scale-with-negative", "9"]
    assert main(["generate", *settings, "--out", str(tmp_path / "a.png")]) == 0
    assert "CFG scale with negative: 9.0" in Image.open(tmp_path / "a.png").text["parameters"]
    assert main(["generate", *settings[:-2], "--out", str(tmp_path / "plain.png")]) == 0  # the scale acts
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "plain.png")))
    assert main(["generate", "--from-png", str(tmp_path / "a.png"), "--out", str(tmp_path / "b.png")]) == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.text["parameters"] == b.text["parameters"]
    assert main(["generate", "--from-png", str(tmp_path / "a.png"), "--seed", "6", "--out", str(tmp_path / "c.png")]) == 0
    assert main(["generate", *settings, "--seed", "6", "--out", str(tmp_path / "d.png")]) == 0  # argparse: the last --seed wins
    c, d = Image.open(tmp_path / "c.png"), Image.open(tmp_path / "d.png")
    assert "Seed: 6" in c.text["parameters"] and np.array_equal(np.asarray(c), np.asarray(d))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_from_png_reads_a1111s_own_text(tmp_path):
    """An A1111 infotext: its sampler and schedule type, its 'Clip skip' (counted from 1), fields we do not use ignored."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red circle,\nand a blue square\nNegative prompt: blue square\n"
                                "Steps: 6, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 11, Size: 32x32, "
                                "Model hash: 6ce0161689, Clip skip: 2, Version: v1.10.1")
    Image.new("RGB", (32, 32)).save(tmp_path / "a1111.png", pnginfo=info)
    assert main(["generate", "--from-png", str(tmp_path / "a1111.png"), "--steps", "4", "--out", str(tmp_path / "ours.png")]) == 0
    assert main(["generate", "--prompt", "a red circle,\nand a blue square", "--negative-prompt", "blue square", "--steps", "4",
                 "--scheduler", "dpmpp_2m_karras", "--guidance-scale", "7", "--seed", "11", "--clip-skip", "1",
                 "--out", str(tmp_path / "typed.png")]) == 0
    ours, typed = Image.open(tmp_path / "ours.png"), Image.open(tmp_path / "typed.png")
    fields = _read_like_a1111(ours.text["parameters"])
    assert fields["Sampler"] == "dpmpp_2m_karras" and fields["Clip skip"] == "2" and fields["Steps"] == "4"
    assert np.array_equal(np.asarray(ours), np.asarray(typed))


@pytest.mark.parametrize("text, words", [
    (None, "no such file"),
    ("", "no 'parameters'"),
    ("a cat\nSteps: 4, Sampler: DPM adaptive, Seed: 1", "DPM adaptive"),
    ("a cat\nSteps: 4, Sampler: ddim, Seed: 1, Lora: \"style:0.8\"", "--lora"),
    # A1111's own: a LoRA named in the prompt, a schedule type we lack, the hires fix (its "Denoising strength" is no img2img).
    ("a cat <lora:style:0.8>\nSteps: 4, Sampler: Euler, Seed: 1, Lora hashes: \"style: 1234\"", "<lora:style:0.8>"),
    ("a cat\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Exponential, Seed: 1", "Exponential"),
    ("a cat\nSteps: 4, Sampler: Euler, Seed: 1, Denoising strength: 0.7, Hires upscale: 2, Hires upscaler: Latent", "hires fix"),
])
def test_from_png_bad_input(tmp_path, capsys, text, words):
    from PIL import PngImagePlugin

    source = tmp_path / "in.png"
    if text is not None:
        info = PngImagePlugin.PngInfo()
        if text:
            info.add_text("parameters", text)
        Image.new("RGB", (8, 8)).save(source, pnginfo=info)
    out = tmp_path / "out.png"
    assert main(["generate", "--from-png", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "from_png=" in err and words in err and not out.exists()


def test_from_png_takes_lora_tags_out_of_the_prompt_when_the_files_are_given(tmp_path):
    """A1111 strips <lora:...> from the prompt before encoding it; with --lora typed, so do we."""
    from PIL import PngImagePlugin

    from negschedule.from_png import png_arguments

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red circle <lora:style:0.8>\nNegative prompt: <lora:neg:1> blue\nSteps: 4, Sampler: Euler, Seed: 1")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=info)
    flags = png_arguments(str(tmp_path / "a.png"), {"--lora"})
    assert flags[flags.index("--prompt") + 1] == "a red circle " and flags[flags.index("--negative-prompt") + 1].strip() == "blue"
