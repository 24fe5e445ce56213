"""load_pipeline: embedded default, local folders (SD, SDXL), single-file checkpoints, hub ids, bad input.

The single-file tests write a real checkpoint in the original Stable Diffusion key layout
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``) from a tiny
diffusers pipeline. diffusers 0.42 ships only the original -> diffusers direction, so the reverse
key map is written here; loading it back through diffusers' own converter and getting every weight
back bit for bit is what checks both directions.
"""

from __future__ import annotations

import re
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from negschedule import models
from negschedule.errors import InputError
from negschedule.models import default_model_path, load_pipeline
from negschedule.tiny import build_tiny_sd, build_tiny_sdxl

# ---------------------------------------------------------------- original-layout checkpoint writer

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    module, _, param = rest.rpartition(".")
    return f"{_RESNET[module]}.{param}"


def _unet_to_original(unet) -> dict[str, torch.Tensor]:
    """SD 1.x UNet (any depth, layers_per_block) -> ``model.diffusion_model.*`` keys."""
    per_block = unet.config.layers_per_block
    out = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            new = f"{_UNET_TOP[module]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            index = 1 + int(m[1]) * (per_block + 1) + int(m[3])
            new = f"input_blocks.{index}.0.{_resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{index}.1.{m[4]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (per_block + 1)}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            index = int(m[1]) * (per_block + 1) + int(m[3])
            new = f"output_blocks.{index}.0.{_resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{index}.1.{m[4]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            block = int(m[1])
            slot = 2 if hasattr(unet.up_blocks[block], "attentions") else 1  # after the attention, if any
            new = f"output_blocks.{block * (per_block + 1) + per_block}.{slot}.conv.{m[2]}"
        else:
            raise KeyError(f"no original-layout name for {key}")
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_original(vae) -> dict[str, torch.Tensor]:
    up_levels = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        block = r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)"
        if m := re.fullmatch(block, key):
            part, direction, i, kind, j, rest = m.groups()
            # The original numbers the decoder's levels from the bottom, diffusers from the top.
            level = int(i) if direction == "down" else up_levels - 1 - int(i)
            if kind == "resnets":
                new = f"{part}.{direction}.{level}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                new = f"{part}.{direction}.{level}.{direction}sample.{rest}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]  # the original VAE attention is made of 1x1 convolutions
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        out["first_stage_model." + new] = value
    return out


def _text_encoder_to_original(text_encoder) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no "text_model." prefix); the original layout keeps it.
    return {
        "cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in text_encoder.state_dict().items()
    }


def write_original_checkpoint(pipe, path) -> dict[str, torch.Tensor]:
    state = {
        **_unet_to_original(pipe.unet),
        **_vae_to_original(pipe.vae),
        **_text_encoder_to_original(pipe.text_encoder),
    }
    state = {k: v.contiguous() for k, v in state.items()}
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, str(path))  # as the original trainers save .ckpt
    return state


# ---------------------------------------------------------------- helpers and fixtures


def assert_same_weights(expected, actual, components=("unet", "vae", "text_encoder")):
    for name in components:
        want, got = getattr(expected, name).state_dict(), getattr(actual, name).state_dict()
        assert set(want) == set(got), name
        differing = [k for k in want if not torch.equal(want[k], got[k].to(want[k].dtype))]
        assert not differing, f"{name}: {differing[:5]}"


def latents(pipe, steps=2):
    return pipe(
        "a red cube",
        negative_prompt="blue",
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images


@pytest.fixture(scope="module")
def source():
    return build_tiny_sd(seed=0)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory, source):
    folder = tmp_path_factory.mktemp("sd") / "pipe"
    source.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
    """model_index.json and component configs of a *different* tiny pipeline, with its weights deleted."""
    folder = tmp_path_factory.mktemp("config") / "sd-configs"
    build_tiny_sd(seed=5).save_pretrained(folder)
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return folder


# ---------------------------------------------------------------- default model


def test_default_without_toyworld_is_the_tiny_pipeline(monkeypatch, tmp_path, source):
    monkeypatch.setattr(models, "_TOYWORLD_DIR", tmp_path / "absent")
    assert default_model_path() is None
    pipe = load_pipeline()
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert_same_weights(source, pipe)


def test_default_loads_the_toyworld_folder_when_installed(monkeypatch, tmp_path):
    shipped = build_tiny_sd(seed=3)
    shipped.save_pretrained(tmp_path / "toyworld")
    monkeypatch.setattr(models, "_TOYWORLD_DIR", tmp_path / "toyworld")
    assert default_model_path() == tmp_path / "toyworld"
    assert_same_weights(shipped, load_pipeline())


def test_default_with_dtype(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_TOYWORLD_DIR", tmp_path / "absent")
    assert load_pipeline(torch_dtype=torch.float16).unet.dtype == torch.float16


# ---------------------------------------------------------------- local folders


def test_folder_round_trip_with_scheduler(sd_folder, source):
    pipe = load_pipeline(sd_folder, scheduler="euler_a")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert_same_weights(source, pipe)


def test_folder_dtype_and_device(sd_folder):
    pipe = load_pipeline(str(sd_folder), torch_dtype=torch.float16, device="cpu")
    assert pipe.unet.dtype == torch.float16 and pipe.device.type == "cpu"


def test_dtype_by_name_and_bad_dtype(sd_folder):
    assert load_pipeline(sd_folder, torch_dtype="bfloat16").unet.dtype == torch.bfloat16
    with pytest.raises(InputError) as err:
        load_pipeline(sd_folder, torch_dtype="half-ish")
    assert err.value.argument == "torch_dtype"


def test_sdxl_folder(tmp_path):
    sdxl = build_tiny_sdxl(seed=0)
    sdxl.save_pretrained(tmp_path / "xl")
    pipe = load_pipeline(tmp_path / "xl")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert_same_weights(sdxl, pipe, ("unet", "vae", "text_encoder", "text_encoder_2"))


def test_folder_without_model_index(tmp_path):
    with pytest.raises(InputError) as err:
        load_pipeline(tmp_path)
    assert err.value.argument == "model" and "model_index.json" in err.value.reason


def test_config_only_applies_to_single_files(sd_folder, config_only):
    with pytest.raises(InputError) as err:
        load_pipeline(sd_folder, config=config_only)
    assert err.value.argument == "config"


# ---------------------------------------------------------------- single-file checkpoints


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip(tmp_path, source, config_only, suffix):
    checkpoint = tmp_path / f"model{suffix}"
    write_original_checkpoint(source, checkpoint)
    pipe = load_pipeline(checkpoint, config=config_only, scheduler="ddim")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    # Every weight comes from the file (the config folder holds a different seed's configs, no weights).
    assert_same_weights(source, pipe)
    assert torch.equal(latents(pipe), latents(source))


def test_single_file_needs_config(tmp_path, source):
    checkpoint = tmp_path / "model.safetensors"
    write_original_checkpoint(source, checkpoint)
    with pytest.raises(InputError) as err:
        load_pipeline(checkpoint)
    assert err.value.argument == "config" and "model.safetensors" in err.value.reason


def test_single_file_config_must_be_a_diffusers_folder(tmp_path, source):
    checkpoint = tmp_path / "model.safetensors"
    write_original_checkpoint(source, checkpoint)
    with pytest.raises(InputError) as err:
        load_pipeline(checkpoint, config=tmp_path)
    assert err.value.argument == "config" and "model_index.json" in err.value.reason


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"this is not a safetensors file", id="garbage"),
        pytest.param(lambda data: data[: len(data) - 64], id="truncated"),
    ],
)
def test_corrupt_safetensors_names_model_and_file(tmp_path, source, config_only, damage):
    good = tmp_path / "good.safetensors"
    write_original_checkpoint(source, good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(InputError) as err:
        load_pipeline(bad, config=config_only)
    assert err.value.argument == "model"
    assert str(bad) in str(err.value)


def test_single_file_without_unet_is_refused(tmp_path, config_only):
    embedding = tmp_path / "embedding.safetensors"
    save_file({"emb_params": torch.zeros(2, 32)}, str(embedding))
    with pytest.raises(InputError) as err:
        load_pipeline(embedding, config=config_only)
    assert err.value.argument == "model" and "model.diffusion_model" in err.value.reason


def test_single_file_that_does_not_fit_the_config(tmp_path, source):
    """A checkpoint whose weights do not fit the config's shapes is an InputError, not a traceback."""
    checkpoint = tmp_path / "model.safetensors"
    state = write_original_checkpoint(source, checkpoint)
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    state[conv_in] = torch.zeros(16, 4, 3, 3)  # the config says 32 channels
    save_file(state, str(checkpoint))
    folder = tmp_path / "configs"
    source.save_pretrained(folder)
    with pytest.raises(InputError) as err:
        load_pipeline(checkpoint, config=folder)
    assert err.value.argument == "model" and str(checkpoint) in str(err.value)


# ---------------------------------------------------------------- hub ids and missing paths


def test_hub_id_offline_fails_fast_with_a_clear_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        load_pipeline("someorg/no-such-model-here")
    assert time.perf_counter() - start < 10
    assert err.value.argument == "model" and err.value.value == "someorg/no-such-model-here"
    assert "cannot reach the Hugging Face hub" in err.value.reason
    assert "download it and pass the folder" in err.value.reason


@pytest.mark.parametrize("missing", ["no/such/folder/here", "./nothing-here", "gone/model.safetensors"])
def test_missing_path(missing):
    with pytest.raises(InputError) as err:
        load_pipeline(missing)
    assert (err.value.argument, err.value.value, err.value.reason) == ("model", missing, "no such file or folder")


def test_file_of_unknown_kind(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(InputError) as err:
        load_pipeline(notes)
    assert err.value.argument == "model" and ".safetensors" in err.value.reason


def test_unknown_scheduler_fails_before_loading(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model before checking the scheduler name")

    monkeypatch.setattr(models, "_classify", no_loading)
    with pytest.raises(InputError) as err:
        load_pipeline(scheduler="no_such_sampler")
    assert err.value.argument == "scheduler"


# ---------------------------------------------------------------- textual inversions through load_pipeline


def test_textual_inversions_are_applied(sd_folder, tmp_path):
    embedding = tmp_path / "neg.safetensors"
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    save_file({"emb_params": vectors}, str(embedding))
    pipe = load_pipeline(sd_folder, textual_inversions=[(embedding, "MyNeg")])
    ids = pipe.tokenizer.convert_tokens_to_ids(["myneg", "myneg_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], vectors)


def test_missing_textual_inversion_fails_before_loading(tmp_path):
    with pytest.raises(InputError) as err:
        load_pipeline("no/such/model", textual_inversions=[(tmp_path / "missing.pt", "x")])
    assert err.value.argument == "textual_inversions"


def test_checkpoint_file_keys_are_original_layout(tmp_path, source):
    """The writer produces the layout real A1111 checkpoints have (the keys diffusers detects them by)."""
    checkpoint = tmp_path / "model.safetensors"
    write_original_checkpoint(source, checkpoint)
    keys = set(load_file(str(checkpoint)))
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert all(k.split(".")[0] in {"model", "first_stage_model", "cond_stage_model"} for k in keys)


def test_weights_fingerprint_follows_the_weights_not_the_path(tmp_path):
    first, copy, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_tiny_sd(seed=0).save_pretrained(first)
    build_tiny_sd(seed=0).save_pretrained(copy)
    build_tiny_sd(seed=1).save_pretrained(other)
    assert models.weights_fingerprint(first) == models.weights_fingerprint(copy)  # the same weights elsewhere
    assert models.weights_fingerprint(first) != models.weights_fingerprint(other)
    build_tiny_sd(seed=1).save_pretrained(first)  # retrained in place
    assert models.weights_fingerprint(first) == models.weights_fingerprint(other)
    assert models.weights_fingerprint("someone/some-model") is None  # a hub id: its files are not here
    with pytest.raises(InputError) as err:
        models.weights_fingerprint(tmp_path / "nowhere")
    assert err.value.argument == "model"


def tiny_lora(folder, name: str = "tiny_lora", seed: int = 0):
    """A LoRA file for the tiny SD UNet's attention (rank 4, non-zero up-projections), in diffusers' layout."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = build_tiny_sd(seed=0)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # peft starts the up-projections at zero, which would change nothing
        for parameter_name, parameter in donor.unet.named_parameters():
            if "lora_" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(donor.unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=f"{name}.safetensors")
    return folder / f"{name}.safetensors"


def test_loras_load_as_adapters_at_their_weights(sd_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    from negschedule import generate

    first, second = tiny_lora(tmp_path, "first", seed=1), tiny_lora(tmp_path, "second", seed=2)
    pipe = load_pipeline(str(sd_folder), loras=[(first, 0.7), (second, -0.3)])
    by_hand = StableDiffusionPipeline.from_pretrained(sd_folder)
    by_hand.load_lora_weights(str(first), adapter_name="a")
    by_hand.load_lora_weights(str(second), adapter_name="b")
    by_hand.set_adapters(["a", "b"], adapter_weights=[0.7, -0.3])
    plain = StableDiffusionPipeline.from_pretrained(sd_folder)

    def run(p, **timing):
        p.set_progress_bar_config(disable=True)
        return generate(p, prompt="a red cat", negative_prompt="blue hat", num_inference_steps=4, output_type="latent",
                        generator=torch.Generator().manual_seed(3), **timing).images

    assert torch.equal(run(pipe, negative_start=2), run(by_hand, negative_start=2))
    assert not torch.equal(run(pipe, negative_start=2), run(plain, negative_start=2))
    # The timed negative still drives the LoRA'd pipeline's own loop: start 0 is its stock negative prompt.
    stock = pipe(prompt="a red cat", negative_prompt="blue hat", num_inference_steps=4, output_type="latent",
                 generator=torch.Generator().manual_seed(3)).images
    assert torch.equal(run(pipe, negative_start=0), stock)


def test_lora_bad_input(sd_folder, tmp_path):
    with pytest.raises(InputError) as err:
        load_pipeline(str(sd_folder), loras=[(tmp_path / "missing.safetensors", 1.0)])
    assert err.value.argument == "loras" and "no such file" in str(err.value)
    not_a_lora = tmp_path / "weights.safetensors"
    save_file({"some.weight": torch.zeros(3)}, str(not_a_lora))
    with pytest.raises(InputError) as err:
        load_pipeline(str(sd_folder), loras=[(not_a_lora, 1.0)])
    assert err.value.argument == "loras" and "not a LoRA" in str(err.value)
    with pytest.raises(InputError, match="finite"):
        load_pipeline(str(sd_folder), loras=[(not_a_lora, float("nan"))])


def test_every_scheduler_name_round_trips_and_karras_spacing_differs(sd_folder):
    """Each short name builds its sampler and is recognised again (the PNG's Sampler field); the Karras
    variants are the same solvers on another sigma spacing."""
    from negschedule.schedulers import SCHEDULERS, make_scheduler, scheduler_name

    for name in SCHEDULERS:
        assert scheduler_name(make_scheduler(name)) == name
        assert scheduler_name(load_pipeline(str(sd_folder), scheduler=name).scheduler) == name
    plain, karras = make_scheduler("dpmpp_2m"), make_scheduler("dpmpp_2m_karras")
    plain.set_timesteps(10)
    karras.set_timesteps(10)
    assert type(plain) is type(karras) and not torch.equal(plain.sigmas, karras.sigmas)
