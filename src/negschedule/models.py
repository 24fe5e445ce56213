"""Loading a model: the embedded toy default, a local diffusers folder, a single-file checkpoint, a hub id.

``load_pipeline`` is the one entry point. It decides what ``model`` names (nothing, a folder, a
``.safetensors``/``.ckpt`` file in the original Stable Diffusion layout, a Hugging Face hub id), loads
it with diffusers' own loaders, and turns every way that can fail on user input (missing path,
corrupt file, no network) into an :class:`~negschedule.errors.InputError` naming the argument and
the value. Nothing here fetches from the network unless ``model`` is a hub id and the hub is
reachable. Textual inversion files are loaded by :mod:`negschedule.textual_inversion`; this module
only applies the ones it is given. LoRA files go through diffusers' ``load_lora_weights`` (which
reads the diffusers, kohya and A1111 layouts), each as a named adapter at its weight.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError

# Where the toy-world model ships (diffusers folder format) once it is trained and committed.
_TOYWORLD_DIR = Path(__file__).resolve().parent / "assets" / "toyworld"

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

# A hub id is "org/name" with the characters the hub allows; anything else is a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# Exception class names (anywhere in the cause chain) that mean "the hub could not be reached".
# Matched by name because huggingface_hub, requests and httpx each have their own classes and we
# do not want to import (or pin) the HTTP stack huggingface_hub happens to use.
_UNREACHABLE = {
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "TimeoutException",
    "Timeout",
    "ReadTimeout",
}


def default_model_path() -> Path | None:
    """The folder of the embedded default model, or ``None`` while it is not installed.

    ``None`` makes :func:`load_pipeline` fall back to :func:`negschedule.tiny.build_tiny_sd`.
    """
    return _TOYWORLD_DIR if (_TOYWORLD_DIR / "model_index.json").is_file() else None


def default_model_name() -> str:
    """What the PNG ``parameters`` call the default model (A1111's "Model:"): a name, not this machine's path."""
    return "negschedule-toyworld" if default_model_path() is not None else "negschedule-tiny-random"


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_HASHED_BYTES = 256 * 2**20  # weight files up to this size are hashed whole; bigger ones by size and time


def weights_fingerprint(model: str | os.PathLike | None = None) -> str | None:
    """A short digest of the weights ``load_pipeline(model)`` would read (``None`` for a hub id).

    Resumable experiments keep it in their settings, so a rerun into the same folder after the
    model at the same path was retrained is refused instead of mixing two models' results. Small
    files (the toy models) are hashed whole; a multi-GB checkpoint by its size and modification
    time, which a retraining changes, so that resuming does not read gigabytes first.
    """
    import hashlib

    kind, path = _classify(model)
    if kind == "hub":
        return None
    if kind == "default":
        path = default_model_path()
        if path is None:
            return "tiny-random"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    for file in files:
        _digest_file(digest, file, str(file.relative_to(path)) if path.is_dir() else file.name)
    return digest.hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> str:
    """The same short digest for one file (an embedding, a LoRA), for the settings of resumable experiments."""
    import hashlib

    digest = hashlib.sha256()
    _digest_file(digest, Path(path), Path(path).name)
    return digest.hexdigest()[:16]


def _digest_file(digest, file: Path, name: str) -> None:
    stat = file.stat()
    digest.update(f"{name}:{stat.st_size}\n".encode())
    if stat.st_size <= _HASHED_BYTES:
        digest.update(file.read_bytes())
    else:
        digest.update(str(stat.st_mtime_ns).encode())


def load_pipeline(
    model: str | os.PathLike | None = None,
    *,
    scheduler: str | None = None,
    config: str | os.PathLike | None = None,
    torch_dtype=None,
    device: str | None = None,
    textual_inversions: Sequence[tuple[str | os.PathLike, str]] = (),
    loras: Sequence[tuple[str | os.PathLike, float]] = (),
):
    """Load a diffusers pipeline from ``model``; see the module docstring for what ``model`` may be.

    ``config`` is a local diffusers folder (``model_index.json`` and component configs) and is
    required for, and only used with, a single-file checkpoint. ``scheduler`` is a name from
    :mod:`negschedule.schedulers`. ``textual_inversions`` are ``(file, token)`` pairs loaded with
    :func:`negschedule.textual_inversion.load_textual_inversion`. ``loras`` are ``(file, weight)``
    pairs, each loaded as an adapter and all set active at their weights (A1111's ``<lora:name:w>``).
    ``device`` ("cuda", "cuda:1", "mps", "cpu" or "auto": the first GPU there is) is where the loaded
    pipeline is moved, None leaving it where it loads; ``torch_dtype`` a dtype, its name, or "auto"
    (float16 on a GPU; see :mod:`negschedule.devices`). The pipeline's progress bar is left as
    diffusers configures it.
    """
    # Cheap checks first, so bad input fails before a model is loaded.
    if scheduler is not None:
        from .schedulers import make_scheduler

        make_scheduler(scheduler)
    for ti_path, _token in textual_inversions:
        if not Path(ti_path).is_file():
            raise InputError("textual_inversions", str(ti_path), "no such file")
    check_loras(loras)
    from .devices import resolve_device, resolve_dtype

    device = resolve_device(device)
    dtype = resolve_dtype(torch_dtype, device)

    source, where = _classify(model)
    if config is not None and source != "single_file":
        raise InputError("config", str(config), "only used with a single-file checkpoint (.safetensors/.ckpt)")

    # diffusers 0.42 deprecates its own torch_dtype= in favour of dtype=; users still know torch_dtype.
    dtype_kwargs = {} if dtype is None else {"dtype": dtype}
    if source == "default":
        pipe = _load_default(dtype_kwargs)
    elif source == "folder":
        pipe = _load_folder(where, dtype_kwargs)
    elif source == "single_file":
        pipe = _load_single_file(where, config, dtype_kwargs)
    else:
        pipe = _load_hub(where, dtype_kwargs)

    if scheduler is not None:
        from .schedulers import set_scheduler

        set_scheduler(pipe, scheduler)
    if textual_inversions:
        from .textual_inversion import load_textual_inversion

        for ti_path, token in textual_inversions:
            load_textual_inversion(pipe, ti_path, token)
    if loras:
        load_loras(pipe, loras)
    if device is not None:
        pipe.to(device)
    return pipe


def check_loras(loras: Sequence[tuple[str | os.PathLike, float]]) -> None:
    """What can be checked of LoRA files before a model loads: they exist, their weights are numbers."""
    import math

    for path, weight in loras:
        if not Path(path).is_file():
            raise InputError("loras", str(path), "no such file")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise InputError("loras", f"{path}:{weight}", "the weight must be a finite number")


def load_loras(pipe, loras: Sequence[tuple[str | os.PathLike, float]]) -> list[str]:
    """Load each LoRA file as an adapter of ``pipe`` and activate them all at their weights; returns the adapter names."""
    check_loras(loras)
    names = []
    for index, (path, _weight) in enumerate(loras):
        name = f"lora{index}_{re.sub(r'[^A-Za-z0-9_]', '_', Path(path).stem)}"  # unique, and a valid module name
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except ImportError as exc:
            raise InputError("loras", str(path), f"loading a LoRA needs peft ({_first_line(exc)})") from None
        except Exception as exc:  # a corrupt file, another model's LoRA, not a LoRA at all: one clear line
            raise InputError("loras", str(path), f"not a LoRA this pipeline can load ({_first_line(exc)})") from None
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[float(w) for _, w in loras])
    return names


def image_to_image(pipe):
    """The img2img form of ``pipe`` over the same loaded parts (diffusers' ``AutoPipelineForImage2Image.from_pipe``).

    Nothing is copied or reloaded: the UNet, VAE, text encoders, scheduler and loaded embeddings
    are ``pipe``'s own, so ``generate()`` times the negative on it as on the text-to-image pipeline.
    """
    from diffusers import AutoPipelineForImage2Image

    try:
        return AutoPipelineForImage2Image.from_pipe(pipe)
    except ValueError as err:
        raise InputError("init_image", type(pipe).__name__, f"this pipeline has no image-to-image form ({err})") from None


def _classify(model) -> tuple[str, Path | str | None]:
    """("default" | "folder" | "single_file" | "hub", the path or id), or an InputError for what cannot be a model."""
    if model is None:
        return "default", None
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputError("model", text, "folder has no model_index.json (not a diffusers pipeline folder)")
        return "folder", path
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise InputError(
                "model", text, f"not a model file; expected {' or '.join(SINGLE_FILE_SUFFIXES)} or a diffusers folder"
            )
        return "single_file", path
    if _HUB_ID.match(text) and path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return "hub", text
    raise InputError("model", text, "no such file or folder")


def _load_default(dtype_kwargs):
    folder = default_model_path()
    if folder is not None:
        return _load_folder(folder, dtype_kwargs)
    from .tiny import build_tiny_sd

    pipe = build_tiny_sd()
    if "dtype" in dtype_kwargs:
        pipe.to(dtype=dtype_kwargs["dtype"])
    return pipe


def _load_folder(folder: Path, dtype_kwargs):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **dtype_kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError("model", str(folder), f"cannot load this diffusers folder: {_first_line(exc)}") from exc


def _load_single_file(path: Path, config, dtype_kwargs):
    """Original-layout checkpoint + local diffusers config folder -> pipeline, via diffusers' from_single_file."""
    import diffusers

    if config is None:
        raise InputError(
            "config",
            None,
            f"a single-file checkpoint ({path.name}) needs config=<local diffusers folder> holding "
            "model_index.json and the component configs of its base model (e.g. a download of "
            "stable-diffusion-v1-5 without weights), so nothing is fetched from the hub",
        )
    config_dir = Path(config).expanduser()
    index_file = config_dir / "model_index.json"
    if not index_file.is_file():
        raise InputError("config", str(config), "not a diffusers folder with a model_index.json")
    class_name = json.loads(index_file.read_text()).get("_class_name", "")
    pipeline_class = getattr(diffusers, class_name, None)
    if pipeline_class is None or not hasattr(pipeline_class, "from_single_file"):
        raise InputError("config", str(config), f"pipeline class {class_name!r} cannot load single-file checkpoints")

    keys = _checkpoint_keys(path)
    # from_single_file fills whatever the file lacks from elsewhere, sometimes with random weights;
    # a file without UNet weights (a LoRA, an embedding, a VAE) is refused here instead.
    if not any(key.startswith("model.diffusion_model.") for key in keys):
        raise InputError(
            "model",
            str(path),
            "holds no UNet weights in the original Stable Diffusion layout (model.diffusion_model.*); "
            "is it a LoRA, a VAE or an embedding rather than a full checkpoint?",
        )
    try:
        return pipeline_class.from_single_file(
            str(path), config=str(config_dir), local_files_only=True, **dtype_kwargs
        )
    except Exception as exc:  # diffusers raises ValueError, OSError, KeyError, RuntimeError or its own types here
        reason = f"cannot load as a {class_name} checkpoint with config {str(config_dir)!r}: {_first_line(exc)}"
        raise InputError("model", str(path), reason) from exc


def _checkpoint_keys(path: Path) -> list[str]:
    """The tensor names in a checkpoint file; InputError if the file cannot be read."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:  # reads the header only
                return list(handle.keys())
        import torch

        # weights_only: a .ckpt is a pickle; never run code from it. mmap keeps this cheap.
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        while isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a state dict")
        return list(state)
    except Exception as exc:
        reason = f"not a readable {path.suffix} checkpoint (corrupt, truncated or unsafe): {_first_line(exc)}"
        raise InputError("model", str(path), reason) from exc


def hub_offline() -> bool:
    """Whether the hub must not be contacted: ``HF_HUB_OFFLINE`` as the environment says *now*.

    huggingface_hub reads the variable once at import, so setting it later (a test, a notebook)
    would otherwise go unnoticed; we read it ourselves on every call.
    """
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def _load_hub(repo_id: str, dtype_kwargs):
    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import RepositoryNotFoundError

    offline = hub_offline()
    try:
        # Offline, local_files_only makes a cached copy load and a missing one fail at once.
        return DiffusionPipeline.from_pretrained(repo_id, local_files_only=offline, **dtype_kwargs)
    except Exception as exc:
        chain = _cause_chain(exc)
        if any(isinstance(e, RepositoryNotFoundError) for e in chain):
            reason = "no such model on the Hugging Face hub (or it is private or gated), and no such local folder"
        elif offline or any(c.__name__ in _UNREACHABLE for e in chain for c in type(e).__mro__):
            why = "HF_HUB_OFFLINE is set" if offline else "no network"
            reason = (
                f"no such local folder, and cannot reach the Hugging Face hub ({why}) and the model is not "
                "in the local cache; download it and pass the folder"
            )
        else:
            raise
        raise InputError("model", repo_id, reason) from exc


def _cause_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
