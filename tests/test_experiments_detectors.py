"""Concept detectors: the CLIP one on a tiny random CLIPModel built offline, and the toy world's by name."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from negschedule.errors import InputError
from negschedule.experiments.detectors import ClipDetector, ClipSettings, ToyDetector, make_detector


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    from negschedule.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval(), tokenizer


def test_clip_detector_gives_a_probability_and_a_decision():
    model, tokenizer = tiny_clip()
    detector = make_detector("red circle", "clip", model=model, tokenizer=tokenizer)
    assert isinstance(detector, ClipDetector)
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    p_red, p_blue = detector.probability(red), detector.probability(blue)
    assert 0 <= p_red <= 1 and 0 <= p_blue <= 1 and p_red != p_blue
    assert detector(red) == (p_red > 0.5)
    assert detector.probability(red) == p_red  # deterministic
    strict = ClipDetector("red circle", model, tokenizer, settings=ClipSettings(margin=0.99))
    assert strict(red) is False


def test_detector_choice_is_checked():
    with pytest.raises(InputError) as err:
        make_detector("red circle", "owl")
    assert err.value.argument == "detector"
    with pytest.raises(InputError) as err:
        make_detector("red circle", "clip")
    assert err.value.argument == "detector"
    with pytest.raises(InputError):
        make_detector("  ", "toy")
    assert make_detector(None) is None


def test_toy_detector_asks_the_toy_world(monkeypatch):
    toyworld = pytest.importorskip("negschedule.toyworld")

    monkeypatch.setattr(toyworld, "present", lambda image, name: name == "red circle")
    assert ToyDetector("red circle")(Image.new("RGB", (8, 8))) is True
    assert ToyDetector("blue square")(Image.new("RGB", (8, 8))) is False


def test_cli_removal_curve_with_a_clip_model_folder(tmp_path, tiny_sd):
    from negschedule.experiments.commands import main
    from negschedule.schedulers import set_scheduler

    model, tokenizer = tiny_clip()
    clip_dir, model_dir = tmp_path / "clip", tmp_path / "sd"
    model.save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    set_scheduler(tiny_sd, "ddim")
    tiny_sd.save_pretrained(model_dir)
    out = tmp_path / "curve"
    code = main(["removal-curve", "--model", str(model_dir), "--prompt", "a red cat", "--negative-prompt", "cat",
                 "--concept", "cat", "--detector", "clip", "--clip-model", str(clip_dir), "--steps", "4",
                 "--seeds", "0,1", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "curve.json").read_text())
    assert data["model_evaluations"] > 0 and len(data["seeds"]) == 2
    assert (out / "curve.png").exists()


def test_toy_detector_refuses_words_outside_the_toy_world_before_any_work(tiny_sd):
    pytest.importorskip("negschedule.toyworld")
    from negschedule.experiments import sweep

    with pytest.raises(InputError) as err:
        sweep(tiny_sd, prompt="a red cat", negative_prompt="cat", starts=[1], seeds=[0], num_inference_steps=3, concept="cat")
    assert err.value.argument == "concept"


def test_toy_detector_and_object_preservation_on_rendered_scenes():
    toyworld = pytest.importorskip("negschedule.toyworld")
    from negschedule.experiments.metrics import objects_preserved

    scenes = [toyworld.make_scene(seed) for seed in range(3, 9)]
    for scene in scenes:
        image = toyworld.render(scene)
        for obj in scene.objects:
            assert ToyDetector(obj.name)(image) is True
        found = ToyDetector("red circle").objects(image)
        assert found is not None and objects_preserved(found, found, None) in (1.0, None)
    # An empty picture of another scene's background keeps none of a scene's objects.
    image = toyworld.render(scenes[0])
    empty = Image.new("RGB", image.size, tuple(int(v) for v in scenes[0].background))
    kept = objects_preserved(toyworld.detect(image), toyworld.detect(empty), None)
    assert kept == 0.0
