"""Where a pipeline runs: "auto" and named devices checked before loading, dtypes by name, the model moved."""

from __future__ import annotations

import pytest
import torch

from negschedule import load_pipeline
from negschedule.devices import resolve_device, resolve_dtype
from negschedule.errors import InputError


def test_auto_is_the_cpu_without_a_gpu():
    # conftest hides any GPU from the tests, so "auto" must fall back to the CPU here
    assert not torch.cuda.is_available()
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) is None and resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "gpu", "cpu:x", "", "xpu:3", "meta"])
def test_unusable_devices_are_refused_naming_the_argument(device):
    with pytest.raises(InputError) as err:
        resolve_device(device, argument="device")
    assert err.value.argument == "device" and err.value.value == device


def test_dtypes_by_name_and_auto():
    assert resolve_dtype("float16") is torch.float16 and resolve_dtype(torch.bfloat16) is torch.bfloat16
    assert resolve_dtype(None) is None
    assert resolve_dtype("auto", "cpu") is None  # as stored: float16 is slow, and partly missing, on the CPU
    assert resolve_dtype("auto", "cuda:1") is torch.float16 and resolve_dtype("auto", "mps") is torch.float16
    for bad in ("float17", "int8", torch.int64, 3):
        with pytest.raises(InputError, match="dtype"):
            resolve_dtype(bad, argument="dtype")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from negschedule.tiny import build_tiny_sd

    folder = tmp_path_factory.mktemp("tiny_model")
    build_tiny_sd(seed=0).save_pretrained(folder)
    return folder


def test_load_pipeline_takes_device_and_dtype(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir), device="auto", torch_dtype="bfloat16")
    assert pipe.device.type == "cpu" and pipe.unet.dtype is torch.bfloat16 and pipe.text_encoder.dtype is torch.bfloat16
    assert load_pipeline(str(tiny_model_dir), device="cpu", torch_dtype="auto").unet.dtype is torch.float32
    with pytest.raises(InputError, match="device"):
        load_pipeline(str(tiny_model_dir), device="cuda")
