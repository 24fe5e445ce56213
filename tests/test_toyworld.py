"""The shapes world: generator, tokenizer, detector, training recipe, and the shipped model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from negschedule.errors import InputError
from negschedule.toyworld import VOCABULARY, caption, detect, make_scene, present, render
from negschedule.toyworld.tokenizer import build_tokenizer
from negschedule.toyworld.train import ASSET_DIR, TrainConfig, train
from negschedule.toyworld.world import SHIPPED_WORLD, WORLDS, WorldConfig, world_named

SHIPPED = (ASSET_DIR / "model_index.json").is_file()


def test_generator_is_deterministic():
    for seed in (0, 7, 123456):
        a, b = make_scene(seed), make_scene(seed)
        assert a == b
        assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
        assert caption(a, seed) == caption(b, seed)
    assert make_scene(1) != make_scene(2)
    assert render(make_scene(0)).size == (32, 32)


def test_generator_correlations():
    scenes = [make_scene(s) for s in range(3000)]
    lone_moons = [s for s in scenes if not s.objects]  # the shipped world's pictures of the moon's word alone
    assert 0.035 < len(lone_moons) / len(scenes) < 0.065 and all("moon" in caption(s, 1) for s in lone_moons)
    night = [s for s in scenes if s.night and s.objects]
    assert 0.85 < np.mean([s.moon for s in night]) < 0.95  # the implied object
    assert not any(s.moon for s in scenes if not s.night)
    squares = [o for s in scenes for o in s.objects if o.shape == "square"]
    assert 0.75 < np.mean([o.dot for o in squares]) < 0.85  # the usual attribute
    rng = np.random.default_rng(0)
    named = [("moon" in caption(s, rng)) for s in night if s.moon]
    assert 0.25 < np.mean(named) < 0.35
    texts = {caption(scenes[3], k) for k in range(20)}
    assert len(texts) > 3  # the wording varies


def test_every_word_is_one_token():
    tokenizer = build_tokenizer()
    for word in VOCABULARY:
        ids = tokenizer(word).input_ids
        assert len(ids) == 3, (word, tokenizer.convert_ids_to_tokens(ids))
    longest = "night, a small yellow triangle, a big white square with a dot and a small green circle and the moon"
    assert len(tokenizer(longest).input_ids) <= tokenizer.model_max_length


def _matches(scene, found) -> bool:
    truth = sorted((o.name, o.dot) for o in scene.truth)
    if truth != sorted((o.name, o.dot) for o in found):
        return False
    return all(any(t.name == f.name and max(abs(p - q) for p, q in zip(t.box, f.box)) <= 2 for f in found)
               for t in scene.truth)


def test_detector_accuracy_on_ground_truth():
    seeds = range(500_000, 500_600)
    hits = [_matches(make_scene(s), detect(render(make_scene(s)))) for s in seeds]
    assert np.mean(hits) >= 0.99


def test_present():
    scene = next(make_scene(s) for s in range(100) if make_scene(s).moon and make_scene(s).objects[0].shape == "square")
    image = render(scene)
    first = scene.objects[0]
    assert present(image, first.name)
    assert present(image, first.shape) and present(image, first.colour)
    assert present(image, "moon")
    assert present(image, "dot") == any(o.dot for o in scene.objects)
    absent = next(f"{c} {s}" for c in ("red", "blue") for s in ("circle", "triangle")
                  if f"{c} {s}" not in {o.name for o in scene.objects})
    assert not present(image, absent)
    assert present(np.asarray(image), first.name)  # arrays too
    assert present(np.asarray(image) / 255.0, first.name)  # float images in [0, 1]
    day = next(make_scene(s) for s in range(100) if not make_scene(s).night)
    assert not present(render(day), "moon")
    with pytest.raises(InputError):
        present(image, "purple circle")


def test_training_smoke_two_steps_and_resume(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), n_scenes=32, vae_channels=(8, 16), vae_steps=2, vae_batch=4,
                      text_width=16, text_layers=1, text_heads=2, unet_channels=(16, 32), unet_heads=2,
                      unet_steps=2, batch=4, warmup=1, checkpoint_every=1, log_every=1)
    folder = train(cfg)
    assert (folder / "model_index.json").is_file()
    assert "unet step 2/2" in (tmp_path / "train.log").read_text()
    cfg.unet_steps = 3  # resumes from the step-2 checkpoint: one more step, no VAE retraining
    train(cfg)
    log = (tmp_path / "train.log").read_text()
    assert "unet step 3/3" in log and log.count("vae step 2/2") == 1
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_toy_command_rejects_bad_arguments(tmp_path):
    from negschedule.toyworld.commands import main

    assert main(["toy", "train", "--out", str(tmp_path), "--unet-steps", "0"]) == 2
    assert main(["toy", "train", "--out", str(tmp_path / "w"), "--world", "nope"]) == 2
    assert not (tmp_path / "w").exists()
    assert main(["toy", "train", "--out", str(tmp_path / "d"), "--device", "cuda:7"]) == 2  # no such GPU (the suite hides any)
    assert not (tmp_path / "d").exists()
    assert main(["toy", "eval", "--out", str(tmp_path / "eval"), "--scheduler", "nope"]) == 2
    assert not (tmp_path / "eval").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["toy", "train", "--batch", "many"])
    assert exit_info.value.code == 2


@pytest.mark.skipif(not SHIPPED, reason="the trained shapes-world weights are not in src/negschedule/assets/toyworld yet")
def test_shipped_model_loads_offline():
    code = (
        "from diffusers import DiffusionPipeline; import json, sys; "
        f"p = DiffusionPipeline.from_pretrained({str(ASSET_DIR)!r}, local_files_only=True); "
        "print(json.dumps([type(p).__name__, p.tokenizer('triangle').input_ids]))"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    name, ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert name == "StableDiffusionPipeline" and len(ids) == 3
    size = sum(f.stat().st_size for f in ASSET_DIR.rglob("*") if f.is_file())
    assert size <= 30 * 2**20


@pytest.mark.skipif(not SHIPPED, reason="the trained shapes-world weights are not in src/negschedule/assets/toyworld yet")
def test_shipped_model_draws_requested_objects():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(ASSET_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    cases = [("a red circle", ["red circle"]), ("a blue square", ["blue square"]),
             ("a yellow triangle", ["yellow triangle"]), ("a green circle", ["green circle"]),
             ("a white triangle and a red square", ["white triangle", "red square"]),
             ("a blue circle and a yellow square", ["blue circle", "yellow square"]),
             ("night, a green triangle and the moon", ["green triangle", "moon"]),
             ("a big white circle", ["white circle"])]
    images = pipe([c[0] for c in cases], num_inference_steps=20, output_type="np",
                  generator=[torch.Generator().manual_seed(i) for i in range(len(cases))]).images
    drawn = [all(present(im, name) for name in names) for im, (_, names) in zip(images, cases)]
    # A sanity check that the shipped weights draw what is asked (6 of these 8 at the time of shipping);
    # the quality figures themselves are measured by `toy eval` on 200 captions (docs/toyworld.md).
    assert sum(drawn) >= 5, drawn


@pytest.mark.skipif(not SHIPPED, reason="the trained shapes-world weights are not in src/negschedule/assets/toyworld yet")
def test_shipped_model_removes_the_moon_its_night_implies():
    """What the shipped world was chosen for: "night" draws a moon, and the negative "moon" takes it away."""
    from diffusers import StableDiffusionPipeline

    from negschedule.toyworld.evaluate import night_scenes_unnamed_moon

    pipe = StableDiffusionPipeline.from_pretrained(ASSET_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = [text for _, text in night_scenes_unnamed_moon(7_000_000, 12)]  # held out, never naming the moon

    def moons(negative_prompt=None):
        images = pipe(prompts, negative_prompt=negative_prompt and [negative_prompt] * len(prompts),
                      num_inference_steps=20, output_type="np",
                      generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))]).images
        return [present(im, "moon") for im in images]

    base, negated = moons(), moons("moon")
    # toy eval (200 captions): 96.5% drawn, 84% removed from step 0; the first model removed 40.5%.
    assert sum(base) >= 9, base
    assert sum(not n for b, n in zip(base, negated) if b) >= 0.6 * sum(base), (base, negated)


KEPT_MODELS = sorted((Path(__file__).parents[1] / "benchmarks" / "models").glob("*/model_index.json"))


@pytest.mark.parametrize("index", KEPT_MODELS, ids=lambda p: p.parent.name)
def test_kept_models_load_offline_with_the_shipped_architecture(index):
    """The docs reproduce figures with ``--model benchmarks/models/NAME``: each kept model must load
    offline as a stock pipeline, with the shipped model's architecture and vocabulary (only the
    weights and the VAE's scaling factor are its own)."""
    from diffusers import StableDiffusionPipeline

    folder = index.parent
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    for config in ("unet/config.json", "text_encoder/config.json", "vae/config.json", "scheduler/scheduler_config.json"):
        kept, shipped = (json.loads((root / config).read_text()) for root in (folder, ASSET_DIR))
        for config_dict in (kept, shipped):
            config_dict.pop("scaling_factor", None)  # each VAE scales its own latents
        assert kept == shipped, config
    assert (folder / "tokenizer" / "tokenizer.json").read_bytes() == (ASSET_DIR / "tokenizer" / "tokenizer.json").read_bytes()
    assert 0.5 < pipe.vae.config.scaling_factor < 2.0


def test_eval_sets():
    from negschedule.toyworld.evaluate import EvalConfig, night_set, two_object_set

    cfg = EvalConfig(n=20)
    rows = two_object_set(cfg)
    assert rows == two_object_set(cfg) and len(rows) == 20
    for text, requested, other in rows:
        assert len(requested) == 2 and other not in requested
        assert all(name.split()[1] in text for name in requested)
    assert all("moon" not in text and "night" in text for text in night_set(cfg))


def test_world_variants_change_what_they_say():
    """The probed variants (benchmarks/probe_world.py): a named day moon, size by count, partial captions."""
    partial = WORLDS["partial"]
    scenes = [make_scene(s, world=partial) for s in range(3000)]
    day = [s for s in scenes if not s.night]
    assert 0.07 < np.mean([s.moon for s in day]) < 0.13
    rng = np.random.default_rng(0)
    assert all("moon" in caption(s, rng, partial) for s in day if s.moon)  # a day moon is always named
    lone = [w for s in scenes if len(s.objects) == 1 for w in s.size_words]
    assert 0.8 < np.mean([w == "big" for w in lone]) < 0.9
    several = [s for s in scenes if len(s.objects) >= 2]
    texts = [caption(s, rng, partial) for s in several]
    named = [sum(f"{o.colour} {o.shape}" in t for o in s.objects) for s, t in zip(several, texts)]
    assert 0.08 < np.mean([k < len(s.objects) for k, s in zip(named, several)]) < 0.2  # some name only part
    assert all(t.strip(" ,") not in ("", "night", "day") for t in texts)  # never nothing


def test_world_absent_named_variant_names_a_missing_shape_sometimes():
    """absent-named: about 10% of shape captions name one more shape the picture lacks; the scenes are moon-alone's."""
    from negschedule.toyworld.world import COLOURS, SHAPES

    variant, base = WORLDS["absent-named"], WORLDS["moon-alone"]
    scenes = [make_scene(s, world=variant) for s in range(2000)]
    assert scenes == [make_scene(s, world=base) for s in range(2000)]  # the pictures do not change
    rng = np.random.default_rng(0)
    extra = []
    for scene in (s for s in scenes if s.objects):
        text = caption(scene, rng, variant)
        named = [(c, sh) for c in COLOURS for sh in SHAPES if f"{c} {sh}" in text]
        drawn = {(o.colour, o.shape) for o in scene.objects}
        assert drawn <= set(named)  # every drawn shape is still named
        extra.append(len(set(named) - drawn))
    assert set(extra) == {0, 1} and 0.07 < np.mean(extra) < 0.13


def test_world_alone_big_variant():
    """The variant trained in full (docs/toyworld.md): lone moons captioned by their word, lone shapes as close-ups."""
    alone_big = WORLDS["alone-big"]
    everything = [make_scene(s, world=alone_big) for s in range(3000)]
    lone = [s for s in everything if not s.objects]  # a moon alone in the night sky
    assert 0.035 < len(lone) / len(everything) < 0.065
    assert all(s.night and s.moon for s in lone)
    assert {caption(lone[0], k, alone_big) for k in range(50)} == {"moon", "the moon", "a moon", "night, the moon", "the moon at night"}
    assert all(present(render(s), "moon") and not detect(render(s))[1:] for s in lone[:20])
    scenes = [s for s in everything if s.objects]
    singles = [s for s in scenes if len(s.objects) == 1]
    close = [s for s in singles if s.size_words[0] == "big"]
    assert 0.8 < len(close) / len(singles) < 0.9
    # Wider than any big shape among others (the few that are not were two-shape scenes with no room for the second).
    assert np.mean([s.objects[0].box[2] - s.objects[0].box[0] >= 16 for s in close]) > 0.97
    assert max(o.box[2] - o.box[0] for s in scenes if len(s.objects) > 1 for o in s.objects) <= 15
    # The eval sets force the count or the night: no lone moon, and the same scenes as in the first world.
    for forced in ({"n_objects": 2}, {"night": True}):
        assert all(make_scene(s, world=alone_big, **forced).objects for s in range(200))
        assert [make_scene(s, world=WORLDS["moon-alone"], **forced) for s in range(200)] == [
            make_scene(s, **forced) for s in range(200)]


def test_default_world_is_the_shipped_models_and_variants_change_only_their_fields():
    assert SHIPPED_WORLD == "moon-alone" and TrainConfig().world == SHIPPED_WORLD  # toy train reproduces it
    assert all(make_scene(s) == make_scene(s, world=WORLDS[SHIPPED_WORLD]) for s in range(50))
    assert WORLDS["first"] == WorldConfig()
    assert WORLDS["moon-alone"] == dataclasses.replace(WorldConfig(), p_moon_alone=0.05)
    moved = [make_scene(s, world=WORLDS["moon-alone"]) != make_scene(s, world=WORLDS["first"]) for s in range(200)]
    assert sum(moved) > 150  # its extra draw moves the rest of nearly every scene
    with pytest.raises(InputError, match="world='nope'"):
        world_named("nope")


def test_training_uses_its_world_and_refuses_to_resume_with_another(tmp_path):
    from negschedule.toyworld.train import _data, check_resume

    cfg = TrainConfig(out=str(tmp_path), n_scenes=40, world="alone-big")
    data = _data(cfg)

    def picture(seed, world):
        return np.asarray(render(make_scene(seed, world=world)))

    assert all(np.array_equal(data[s].permute(1, 2, 0).numpy(), picture(s, WORLDS["alone-big"])) for s in range(40))
    assert not all(np.array_equal(data[s].permute(1, 2, 0).numpy(), picture(s, WORLDS[SHIPPED_WORLD])) for s in range(40))
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    check_resume(dataclasses.replace(cfg, threads=1, device="cuda", unet_steps=10))  # how and where it runs, and training longer: allowed
    with pytest.raises(InputError, match="--world='first'"):
        check_resume(dataclasses.replace(cfg, world="first"))
    with pytest.raises(InputError, match="--lr"):
        check_resume(dataclasses.replace(cfg, lr=0.5))
    saved = dataclasses.asdict(cfg)
    del saved["world"]  # a run folder from before the field existed: not checked
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_resume(dataclasses.replace(cfg, world="first"))
    with pytest.raises(InputError, match="--world='nope'"):
        train(dataclasses.replace(cfg, world="nope", out=str(tmp_path / "new")))
    assert not (tmp_path / "new").exists()


def test_toy_eval_resumes_after_an_interrupt_and_ends_as_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    """toy eval stores every measured point; a rerun samples only what is missing and writes the same figures."""
    import negschedule.toyworld.evaluate as evaluation
    from negschedule.cli import main

    args = ["--n", "4", "--steps", "2", "--starts", "0,1", "--batch", "4", "--threads", "1"]
    whole = tmp_path / "whole"
    assert main(["toy", "eval", *args, "--out", str(whole)]) == 0
    real, calls = evaluation.sample, []

    def counted(pipe, prompts, seeds, cfg, negative=None, start=0):
        calls.append((tuple(prompts), negative if isinstance(negative, str) else None if negative is None else "list", start))
        if len(calls) == 4:  # the first negative naming an unrequested shape
            raise KeyboardInterrupt
        return real(pipe, prompts, seeds, cfg, negative=negative, start=start)

    monkeypatch.setattr(evaluation, "sample", counted)
    out = tmp_path / "resumed"
    capsys.readouterr()
    assert main(["toy", "eval", *args, "--out", str(out)]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not (out / "eval.json").exists()
    first = len(calls)
    assert main(["toy", "eval", *args, "--out", str(out)]) == 0
    # Again: the no-negative two-shape images (the comparison for the interrupted point), then the
    # points not yet measured: unrequested shape from 0 and 1, night no-negative, moon from 0 and 1.
    assert [(c[1], c[2]) for c in calls[first:]] == [(None, 0), ("list", 0), ("list", 1), (None, 0), ("moon", 0), ("moon", 1)]
    err = capsys.readouterr().err
    assert "toy eval: 1/11 detector (read back from an earlier run)" in err and "toy eval: 11/11 moon-1 (" in err
    figures = [json.loads((d / "eval.json").read_text()) for d in (whole, out)]
    for f in figures:
        f.pop("seconds"), f["config"].pop("out")
    assert figures[0] == figures[1]
    for grid in ("negative_object.png", "negative_moon.png"):
        assert (out / grid).read_bytes() == (whole / grid).read_bytes()
    assert main(["toy", "eval", *args[:-2], "--threads", "1", "--scheduler", "euler", "--out", str(out)]) == 2  # another experiment
    assert "out=" in capsys.readouterr().err
