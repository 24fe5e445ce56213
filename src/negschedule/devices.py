"""Where a pipeline runs and at what precision: ``"auto"`` as GPU users expect, every name checked.

The command line and the web UI default to ``device="auto"`` (the first CUDA GPU, else Apple's MPS,
else the CPU) and ``torch_dtype="auto"`` (float16 on a GPU, as AUTOMATIC1111 and ComfyUI run, and the
model's stored precision on the CPU, where float16 is slow and some kernels lack it). The library's
``load_pipeline`` moves nothing unless asked, as diffusers' ``from_pretrained`` does. Seeds stay on
CPU generators everywhere, so a seed draws the same starting noise on every device.
"""

from __future__ import annotations

from .errors import InputError

AUTO = "auto"


def resolve_device(device: str | None, argument: str = "device") -> str | None:
    """``device`` checked and made concrete: None stays None (leave the model where it loads)."""
    if device is None:
        return None
    import torch

    if device == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(argument, device, "not a torch device (auto, cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cpu":
        return str(parsed)
    if parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(argument, device, "MPS is not available on this machine")
        return str(parsed)
    # CUDA, and any other accelerator torch has a module for (xpu, ...): there, and with that index.
    backend = getattr(torch, parsed.type, None)
    if backend is None or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        name = "CUDA GPU" if parsed.type == "cuda" else f"{parsed.type} device"
        raise InputError(argument, device, f"this torch ({torch.__version__}) sees no {name}")
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if parsed.index is not None and parsed.index >= count:
        raise InputError(argument, device, f"there are {count} {parsed.type} device(s), numbered from 0")
    return str(parsed)


def resolve_dtype(torch_dtype, device: str | None = None, argument: str = "torch_dtype"):
    """A ``torch.dtype`` given one, its name ("float16") or "auto" (float16 on a GPU); None = as stored.

    Checked here because diffusers silently loads float32 for a dtype it does not recognise.
    """
    import torch

    if torch_dtype is None:
        return None
    if torch_dtype == AUTO:
        on_gpu = device is not None and torch.device(device).type in ("cuda", "mps")
        return torch.float16 if on_gpu else None
    resolved = getattr(torch, torch_dtype, None) if isinstance(torch_dtype, str) else torch_dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise InputError(argument, torch_dtype, "not a floating-point torch dtype (auto, float32, float16, bfloat16)")
    return resolved
