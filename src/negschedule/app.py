"""The web UI (``negschedule serve``): what a negative prompt does, step by step, in a page.

This module owns the Gradio app: a *generate* tab (a start-step slider, or ``auto`` with a signal
from the start menu, and the core options, with
the per-step plan of which negative text is active and, on request, the latents decoded after
every step), the three-way *comparison* (no negative | from step 0 | from step k, optionally every
step of the three runs), the *sweep* grid (rows: seeds, columns: the step the negative starts), the
*attention heatmaps* and the *removal curve*. The experiment tabs call ``negschedule.experiments``
and ``negschedule.attention`` (:data:`LIBRARY`) and say so in the page if an installation lacks
them. The page only calls the library; it computes nothing of its own.

What reaches the file system from the page is checked here, in :func:`child_path`: a model is the
embedded default or a folder *directly* under the ``--models-dir`` the server was started with, a
saved PNG goes *directly* under ``--outputs-dir``, and both are plain names (no separators, no
``..``, no leading dot, symlinks resolved), so nothing the page sends can name a path elsewhere.
Without those flags the page can load only the default model and save nothing (its images still
download through the browser, settings inside the PNG).

Bad input (:class:`~negschedule.errors.InputError`) and unexpected failures come back to the page
as a message (``gr.Error``), never as a dead page; long work reports progress (``gr.Progress``).
Gradio is imported only when the app is built, so ``register`` costs the CLI nothing.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded default"
MODEL_SCHEDULER = "model's own"
# A name the page may use for a model folder or an output file: no separators, no "..", no dotfiles.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Work one click may queue: a sweep beyond this is refused rather than left running for hours.
MAX_SWEEP_RUNS = 400
MAX_STEPS = 150
# The start menu: the slider's step, or auto watching one signal (the values are auto.Signal's,
# with ":<AutoStart.choice>" where the rollout's search offers more than its default rule).
SLIDER_START = "slider"
START_RULES = [
    ("step k (the slider)", SLIDER_START),
    ("auto: the model's best rule (look-ahead on the toy world, else attention)", "auto"),
    ("auto: negative's attention", "attention"),
    ("auto: guidance alignment", "alignment"),
    ("auto: toy detector on the x0 preview", "detector"),
    ("auto: toy detector, negative's x0", "negative_preview"),
    ("auto: look-ahead (rollout)", "rollout"),
    ("auto: look-ahead (rollout), verified starts", "rollout:verified"),
    ("auto: look-ahead gate (step 0 if it removes, else late)", "rollout:gate"),
]

Progress = Callable[..., Any]  # gr.Progress, or any callable taking (fraction | (i, n), desc=...)


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    return None


@dataclass
class ServeConfig:
    """What ``negschedule serve`` is started with; the flags mirror it field for field."""

    host: str = "127.0.0.1"  # loopback only; all interfaces ("0.0.0.0") only when asked for
    port: int = 7860
    models_dir: Path | None = None  # the one folder whose model subfolders the page may load; None: default only
    outputs_dir: Path | None = None  # the one folder the page may save PNGs into; None: no saving
    device: str | None = "auto"  # where models run ("cuda", "cuda:1", "mps", "cpu"); auto: the first GPU there is, else the CPU
    dtype: str | None = "auto"  # "float16", "float32", ...; auto: float16 on a GPU, as stored on the CPU

    def validate(self) -> "ServeConfig":
        if not 1 <= int(self.port) <= 65535:
            raise InputError("port", self.port, "must be in 1..65535")
        from .devices import resolve_device, resolve_dtype

        resolve_dtype(self.dtype, resolve_device(self.device), argument="dtype")
        for name in ("models_dir", "outputs_dir"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_dir():
                raise InputError(name, str(value), "no such folder")
        return self


# ---- what the page may name on disk ----------------------------------------------------------------


def child_path(root: str | Path | None, name: Any, argument: str, enable_flag: str) -> Path:
    """``root/name`` for a plain ``name`` whose real path lies directly in ``root``; InputError otherwise."""
    if root is None:
        raise InputError(argument, name, f"not enabled on this server (start it with {enable_flag} DIR)")
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or ".." in name:
        raise InputError(
            argument, name, "must be a plain name (letters, digits, '.', '_', '-'; no path, no '..', no leading dot)"
        )
    real_root = Path(root).resolve()
    path = (real_root / name).resolve()  # a symlink pointing out of the root resolves outside it
    if path.parent != real_root:
        raise InputError(argument, name, f"resolves outside {enable_flag}")
    return path


def list_models(models_dir: str | Path | None) -> list[str]:
    """The choices of the model menu: the default, then every diffusers folder directly in ``models_dir``."""
    names = [DEFAULT_MODEL]
    if models_dir is None:
        return names
    for entry in sorted(Path(models_dir).iterdir()):
        try:
            path = child_path(models_dir, entry.name, "model", "--models-dir")
        except InputError:
            continue
        if (path / "model_index.json").is_file():
            names.append(entry.name)
    return names


def resolve_model(name: Any, models_dir: str | Path | None) -> Path | None:
    """None for the embedded default, else the checked folder of model ``name`` under ``models_dir``."""
    if name in (None, "", DEFAULT_MODEL):
        return None
    path = child_path(models_dir, name, "model", "--models-dir")
    if not (path / "model_index.json").is_file():
        raise InputError("model", name, "no diffusers model folder of that name in --models-dir")
    return path


def output_path(outputs_dir: str | Path | None, name: Any) -> Path:
    """The checked path of a PNG to save as ``name`` (".png" added if missing) in ``outputs_dir``; never overwrites."""
    if isinstance(name, str) and name and not Path(name).suffix:
        name = name + ".png"
    path = child_path(outputs_dir, name, "file_name", "--outputs-dir")
    if path.suffix.lower() != ".png":
        raise InputError("file_name", name, "must end in .png")
    if path.exists():
        raise InputError("file_name", name, "already exists; choose another name")
    return path


# ---- what the page asks for ---------------------------------------------------------------------------


@dataclass
class PageSettings:
    """The core options as the page sends them, checked and in the library's types."""

    model: str
    scheduler: str | None  # None: the model's own
    prompt: str
    negative_prompt: str | None
    negative_start: int | str | None  # "auto": decided while sampling
    negative_end: int | None  # None: to the last step
    cfg_off: bool
    steps: int
    guidance_scale: float
    seed: int
    auto_signal: str | None = None  # with negative_start "auto": what it watches (an auto.Signal value)
    auto_start: int | None = None  # with negative_start "auto": the step it chose (filled in by sampling)
    auto_choice: str | None = None  # with the rollout signal: its search's rule (an AutoStart.choice; None = the default)
    guidance_scale_with_negative: float | None = None  # CFG's scale where the negative acts (None: guidance_scale)

    @property
    def is_auto(self) -> bool:
        return self.negative_start == "auto"

    @property
    def auto_rule(self) -> str | None:
        """What auto watches, as labels say it: "alignment", "rollout, verified", "the model's best rule"."""
        if self.auto_signal is None:
            return "the model's best rule"
        return self.auto_signal if self.auto_choice is None else f"{self.auto_signal}, {self.auto_choice}"

    def chosen(self) -> "PageSettings":
        """These settings with auto's chosen start as a fixed one (what the run did, step by step)."""
        return replace(self, negative_start=self.auto_start) if self.is_auto and self.auto_start is not None else self

    def run_settings(self):
        from .cli import RunSettings

        return RunSettings(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            negative_start=self.negative_start,
            negative_end=self.negative_end,
            cfg_off=self.cfg_off,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            guidance_scale_with_negative=self.guidance_scale_with_negative,
            seed=self.seed,
            scheduler=self.scheduler,
            model=None if self.model == DEFAULT_MODEL else self.model,
            auto_signal=self.auto_signal,
            auto_start=self.auto_start,
            auto_choice=self.auto_choice,
        )

    def timed(self, **timing: Any) -> "PageSettings":
        """These settings as one of a comparison's runs made them (``negative_prompt=None`` or a fixed ``negative_start``)."""
        if not timing:
            return self
        if timing.get("negative_prompt", self.negative_prompt) is None:
            timing = {**timing, "negative_start": None, "negative_end": None, "guidance_scale_with_negative": None}
        return replace(self, **timing, auto_signal=None, auto_start=None, auto_choice=None)

    def negative_start_argument(self):
        """``negative_start`` as generate() takes it (an AutoStart for "auto")."""
        from .cli import _auto

        return _auto(self.run_settings())

    def auto_settings(self, pipe):
        """The ``AutoStart`` that "auto" runs as on ``pipe`` (its default signal made concrete)."""
        from .auto import AutoStart

        given = self.negative_start_argument()
        return (given if isinstance(given, AutoStart) else AutoStart()).resolve(pipe, self.negative_prompt)


def _pass_steps(pipe, steps: int) -> list[int]:
    """The step of each loop pass at ``steps`` steps, counted on a copy of the pipeline's scheduler
    (the engine, under auto, samples with schedulers of its own and leaves ``pipe.scheduler`` unset)."""
    from .passes import step_of_passes

    counter = copy.deepcopy(pipe.scheduler)
    counter.set_timesteps(steps)
    return step_of_passes(counter)


def _whole(value: Any, argument: str, low: int, high: int | None = None) -> int:
    if value is None or value == "":
        raise InputError(argument, value, "is empty")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(argument, value, "must be a whole number") from None
    if not math.isfinite(number) or number != int(number):
        raise InputError(argument, value, "must be a whole number")
    if number < low or (high is not None and number > high):
        raise InputError(argument, value, f"must be in {low}..{high}" if high is not None else f"must be at least {low}")
    return int(number)


def page_settings(
    model: Any,
    scheduler: Any,
    prompt: Any,
    negative_prompt: Any,
    negative_start: Any,
    negative_end: Any,
    cfg_off: Any,
    steps: Any,
    guidance_scale: Any,
    seed: Any,
    start_rule: Any = SLIDER_START,
    guidance_scale_with_negative: Any = None,
) -> PageSettings:
    """Check the core options; an empty negative prompt means none (and the sliders are then ignored).

    ``start_rule``: ``SLIDER_START`` (the start slider's step), "auto" (the start is decided while
    sampling by the model's best rule, ``AutoStart``'s default signal) or an ``auto.Signal`` value
    (decided watching that signal; the slider is then ignored), optionally followed by ":" and an
    ``AutoStart.choice`` ("rollout:verified"). ``guidance_scale_with_negative``: CFG's scale where the
    negative acts (empty: the guidance scale there too).
    """
    from .schedulers import check_scheduler_name

    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt", prompt, "is empty")
    if scheduler in (None, "", MODEL_SCHEDULER):
        scheduler = None
    else:
        check_scheduler_name(scheduler)
    steps_n = _whole(steps, "steps", 1, MAX_STEPS)
    seed_n = _whole(seed, "seed", 0, 2**63 - 1)
    try:
        scale = float(guidance_scale)
    except (TypeError, ValueError):
        raise InputError("guidance_scale", guidance_scale, "must be a number") from None
    if not math.isfinite(scale):
        raise InputError("guidance_scale", guidance_scale, "must be a finite number")
    rules = [value for _, value in START_RULES]
    if start_rule in (None, ""):
        start_rule = SLIDER_START
    if start_rule not in rules:
        raise InputError("start_rule", start_rule, f"choose one of {', '.join(rules)}")
    negative = negative_prompt if isinstance(negative_prompt, str) and negative_prompt.strip() else None
    scale_on = None
    # The page's empty number field may arrive as None, "" or 0 (gradio's Number): all mean "the same scale".
    if negative is not None and guidance_scale_with_negative not in (None, "", 0):
        from .generate import check_scale_with_negative

        try:
            value = float(guidance_scale_with_negative)
        except (TypeError, ValueError):
            raise InputError("guidance_scale_with_negative", guidance_scale_with_negative, "must be a number") from None
        scale_on = check_scale_with_negative(value)
    start = end = signal = choice = None
    if negative is not None:
        if start_rule == SLIDER_START:
            start = _whole(negative_start, "negative_start", 0, steps_n)
        else:
            signal, _, choice = start_rule.partition(":")
            start, signal, choice = "auto", None if signal == "auto" else signal, choice or None
            if cfg_off:
                raise InputError("cfg_off", True, "the auto start keeps CFG on; untick 'CFG off' or use the slider's start")
        end = _whole(negative_end, "negative_end", 0, steps_n) if negative_end not in (None, "") else steps_n
        end = None if end >= steps_n else end  # the slider's right end means "to the last step"
    settings = PageSettings(
        model=model or DEFAULT_MODEL,
        scheduler=scheduler,
        prompt=prompt,
        negative_prompt=negative,
        negative_start=start,
        negative_end=end,
        cfg_off=bool(cfg_off),
        steps=steps_n,
        guidance_scale=scale,
        seed=seed_n,
        auto_signal=signal,
        auto_choice=choice,
        guidance_scale_with_negative=scale_on,
    )
    if settings.is_auto:
        settings.negative_start_argument()  # a signal that cannot read this negative fails before loading
    return settings


def step_plan(s: PageSettings) -> str:
    """Which negative acts at which steps: "steps 0-4: CFG with the empty prompt · steps 5-19: 'glasses'"."""
    from .generate import plan_negatives

    off = "no CFG (positive only)" if s.cfg_off else "CFG with the empty prompt"
    if s.negative_prompt is None:
        return f"steps 0-{s.steps - 1}: CFG with the empty prompt (no negative)"
    if s.is_auto:
        if s.auto_start is None:
            return f"the negative {s.negative_prompt!r} from the step auto chooses while sampling ({s.auto_rule})"
        return f"auto ({s.auto_rule}) chose step {s.auto_start}: " + step_plan(s.chosen())
    keys = plan_negatives(s.negative_prompt, s.steps, 1, s.negative_start, s.negative_end)
    parts, first = [], 0
    for step in range(1, s.steps + 1):
        if step == s.steps or keys[step] != keys[first]:
            text = keys[first][0]
            span = f"step {first}" if step - 1 == first else f"steps {first}-{step - 1}"
            scale = "" if text is None or s.guidance_scale_with_negative is None else f" at CFG {s.guidance_scale_with_negative:g}"
            parts.append(f"{span}: {off if text is None else repr(text) + scale}")
            first = step
    return " · ".join(parts)


def parse_starts(text: Any, steps: int) -> list[int]:
    """Start steps from "0:20" (half-open range), "0:20:2" (with a stride) or "0,3,5"; each in 0..steps."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("starts", text, "is empty; e.g. 0:20 or 0,5,10")
    text = text.strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] <= 0):
                raise ValueError
            if not 0 <= parts[0] <= steps or not 0 <= parts[1] <= steps + 1:
                raise InputError("starts", text, f"a range of steps within 0..{steps}")
            values = list(range(*parts))
        else:
            values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InputError("starts", text, "expected START:STOP[:STRIDE] or a comma list of steps") from None
    if not values:
        raise InputError("starts", text, "gives no start steps")
    bad = [v for v in values if not 0 <= v <= steps]
    if bad:
        raise InputError("starts", text, f"step {bad[0]} is outside 0..{steps}")
    return list(dict.fromkeys(values))


def parse_seeds(text: Any, limit: int = 64) -> list[int]:
    """Seeds from "0,1,2" (or "0:4"); at most ``limit`` of them."""
    if isinstance(text, (int, float)):
        text = str(int(text))
    if not isinstance(text, str) or not text.strip():
        raise InputError("seeds", text, "is empty; e.g. 0,1,2")
    try:
        if ":" in text:
            a, b = (int(p) for p in text.split(":"))
            if b - a > limit:
                raise InputError("seeds", text, f"at most {limit} seeds from the page")
            values = list(range(a, b))
        else:
            values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InputError("seeds", text, "expected a comma list of whole numbers or START:STOP") from None
    if not values or any(v < 0 for v in values):
        raise InputError("seeds", text, "needs at least one seed, none negative")
    if len(set(values)) > limit:
        raise InputError("seeds", text, f"at most {limit} seeds from the page")
    return list(dict.fromkeys(values))


# What the experiment tabs call, by (module, name): the library that draws them, imported when used.
LIBRARY = {
    "sweep": ("negschedule.experiments", "sweep"),
    "attention_maps": ("negschedule.attention", "attention_maps"),
    "render_strip": ("negschedule.attention", "render_strip"),
    "removal_curve": ("negschedule.experiments.removal", "removal_curve"),
    "removal_plot": ("negschedule.experiments.report", "removal_plot"),
}


def experiment(name: str):
    """The library function ``name`` of :data:`LIBRARY` if this installation has it, else None."""
    module_name, attribute = LIBRARY[name]
    try:
        module = importlib.import_module(module_name)
    except Exception:  # absent, or half-written: the other tabs must still work
        log.warning("%s cannot be imported", module_name, exc_info=True)
        return None
    return getattr(module, attribute, None)


def _titled(image, title: str):
    """``image`` under a bar with ``title``."""
    from PIL import Image, ImageDraw

    from .images import LABEL_HEIGHT

    out = Image.new("RGB", (image.width, image.height + LABEL_HEIGHT), (235, 235, 235))
    ImageDraw.Draw(out).text((4, 4), title, fill="black")
    out.paste(image.convert("RGB"), (0, LABEL_HEIGHT))
    return out


def _stack(rows: Sequence[Any]):
    """Images one under another, on white, left-aligned."""
    from PIL import Image

    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        out.paste(row.convert("RGB"), (0, y))
        y += row.height
    return out


# ---- the handlers: plain Python, tested without a browser --------------------------------------------


class UI:
    """The page's handlers over one server's models; one model call at a time (the pipeline is shared)."""

    def __init__(self, config: ServeConfig | None = None, default_pipe=None):
        self.config = config or ServeConfig()
        self._lock = threading.Lock()
        self._pipes: dict[str, tuple[Any, Any]] = {}  # model name -> (pipeline, its own scheduler)
        if default_pipe is not None:
            self._keep(DEFAULT_MODEL, default_pipe)

    # models

    def model_choices(self) -> list[str]:
        return list_models(self.config.models_dir)

    def default_model_description(self) -> str:
        from .models import default_model_path

        if default_model_path() is None:
            return "the tiny random-weight pipeline (the toy-world weights are not installed: it draws noise)"
        return "the toy shapes-world model"

    def runs_on(self) -> str:
        """Where the served models run, for the page's header: "cuda, float16", "cpu, as stored"."""
        from .devices import resolve_device, resolve_dtype

        device = resolve_device(self.config.device) or "cpu"
        dtype = resolve_dtype(self.config.dtype, device, argument="dtype")
        return f"{device}, {'as stored' if dtype is None else str(dtype).removeprefix('torch.')}"

    def _keep(self, name: str, pipe) -> None:
        pipe.set_progress_bar_config(disable=True)
        self._pipes[name] = (pipe, copy.deepcopy(pipe.scheduler))

    def preload(self) -> None:
        """Load the embedded default now, so the first click does not wait for it."""
        with self._lock:
            self._pipeline(DEFAULT_MODEL, None)

    def _pipeline(self, model: str, scheduler: str | None):
        """The pipeline of ``model`` with ``scheduler`` set; call with the lock held."""
        path = resolve_model(model, self.config.models_dir)
        if model not in self._pipes:
            from .models import load_pipeline

            # The default stays; any other model replaces the previous one, so memory stays bounded.
            for name in [n for n in self._pipes if n != DEFAULT_MODEL]:
                del self._pipes[name]
            loaded = load_pipeline(None if path is None else str(path), device=self.config.device, torch_dtype=self.config.dtype)
            self._keep(model, loaded)
        pipe, own = self._pipes[model]
        if scheduler is None:
            pipe.scheduler = copy.deepcopy(own)
        else:
            from .schedulers import make_scheduler

            # Built from the model's own config each time: switching back and forth loses no key.
            pipe.scheduler = make_scheduler(scheduler, dict(own.config))
        return pipe

    # generation

    def _image(self, pipe, s: PageSettings, progress: Progress, desc: str, record_steps: bool = False, **timing: Any):
        """One ``generate()`` call with the page's settings (``timing`` overrides), progress per pass."""
        import torch

        from .generate import generate

        kwargs: dict[str, Any] = dict(
            prompt=s.prompt,
            negative_prompt=s.negative_prompt,
            negative_start=s.negative_start_argument() if s.is_auto else s.negative_start,
            negative_end=s.negative_end,
            cfg_off=s.cfg_off,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            guidance_scale_with_negative=s.guidance_scale_with_negative,
            generator=torch.Generator().manual_seed(s.seed),
        )
        kwargs.update(timing)
        if kwargs["negative_prompt"] is None:
            kwargs.update(negative_start=None, negative_end=None, guidance_scale_with_negative=None)
        steps_latents: dict[int, Any] = {}  # by step: auto's look-ahead may go back and run steps again
        pass_steps = _pass_steps(pipe, s.steps)

        def on_pass(pipeline, i, t, tensors):
            progress((i + 1, len(pass_steps)), desc=desc)
            last_of_step = i + 1 == len(pass_steps) or pass_steps[i + 1] != pass_steps[i]
            if record_steps and last_of_step:
                steps_latents[pass_steps[i]] = tensors["latents"].clone()
            return {}

        out = generate(pipe, callback_on_step_end=on_pass, callback_on_step_end_tensor_inputs=["latents"], **kwargs)
        if s.is_auto and not timing:  # a comparison's other runs (no negative, step 0) choose nothing
            s.auto_start = out.negative_start
        image = out.images[0]
        if record_steps:
            return image, [self._decode(pipe, steps_latents[step]) for step in sorted(steps_latents)]
        return image

    @staticmethod
    def _decode(pipe, latents):
        import torch

        with torch.no_grad():
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")[0]

    def _tag(self, pipe, s: PageSettings, image, **extra: Any):
        """Put the settings in the image's PNG text (A1111 layout), as the CLI writes them."""
        from .cli import png_parameters

        image.info["parameters"] = png_parameters(pipe, s.run_settings(), **extra)
        return image

    def generate(self, *inputs: Any, progress: Progress = _no_progress):
        """(image, per-step images, status): one image with the negative timed by the start slider.

        ``inputs``: the core options, then whether to decode the latents after every step.
        """
        *core, show_steps = inputs
        s = page_settings(*core)
        show_steps = bool(show_steps)
        with self._lock:
            pipe = self._pipeline(s.model, s.scheduler)
            began = time.perf_counter()
            result = self._image(pipe, s, progress, "sampling", record_steps=show_steps)
            image, per_step = result if show_steps else (result, [])
            self._tag(pipe, s, image)
        plan = step_plan(s)
        keys = self._step_texts(s)
        gallery = [(img, f"{i}: {keys[i]}") for i, img in enumerate(per_step)]
        status = f"{s.steps} steps in {time.perf_counter() - began:.1f} s. Negative: {plan}"
        return image, gallery, status

    def _step_texts(self, s: PageSettings) -> list[str]:
        if s.negative_prompt is None:
            return ["no negative"] * s.steps
        from .generate import plan_negatives

        s = s.chosen()
        keys = plan_negatives(s.negative_prompt, s.steps, 1, s.negative_start, s.negative_end)
        return ["off" if key[0] is None else repr(key[0]) for key in keys]

    def compare(self, *inputs: Any, progress: Progress = _no_progress):
        """(labelled row, the three images, step grid or None, status): no negative | from step 0 | from step k.

        ``inputs``: the core options, then whether to show every step: a grid with a row per run
        and a column per step (the latents decoded after it), where the runs part can be seen.
        """
        from .images import labelled_row

        *core, show_steps = inputs
        s = page_settings(*core)
        if s.negative_prompt is None:
            raise InputError("negative_prompt", None, "the comparison needs a negative prompt")
        k = f"auto ({s.auto_rule})" if s.is_auto else s.negative_start
        labels = ["no negative", "negative from step 0", f"negative from step {k}"]
        timings = [dict(negative_prompt=None), dict(negative_start=0), {}]
        images, strips = [], []
        with self._lock:
            pipe = self._pipeline(s.model, s.scheduler)
            began = time.perf_counter()
            for n, (label, timing) in enumerate(zip(labels, timings)):
                result = self._image(pipe, s, progress, f"{n + 1}/3: {label}", record_steps=bool(show_steps), **timing)
                image, per_step = result if show_steps else (result, [])
                if s.is_auto and not timing:
                    labels[n] = label = f"negative from step {s.auto_start} (auto, {s.auto_rule})"
                images.append(self._tag(pipe, s.timed(**timing), image, Comparison=label))
                strips.append(per_step)
        row = labelled_row(images, labels)
        grid = None
        if show_steps:
            rows = []
            for label, timing, per_step in zip(labels, timings, strips):
                active = self._step_texts(s.timed(**timing))
                tiles = [f"{i}{' neg' if a not in ('off', 'no negative') else ''}" for i, a in enumerate(active)]
                rows.append(_titled(labelled_row(per_step, tiles, min_tile=64), label))
            grid = _stack(rows)
        status = f"3 runs of {s.steps} steps in {time.perf_counter() - began:.1f} s. Third run: {step_plan(s)}"
        return row, list(zip(images, labels)), grid, status

    def sweep(self, *inputs: Any, progress: Progress = _no_progress):
        """(grid, status): rows are seeds, columns the no-negative image then one per start step."""
        from .auto import Signal
        from .images import labelled_row

        *core, starts_text, seeds_text = inputs
        s = page_settings(*core)
        if s.negative_prompt is None:
            raise InputError("negative_prompt", None, "the sweep needs a negative prompt")
        starts = parse_starts(starts_text, s.steps)
        seeds = parse_seeds(seeds_text)
        runs = len(seeds) * (len(starts) + 1 + s.is_auto)
        if runs > MAX_SWEEP_RUNS:
            raise InputError("starts", starts_text, f"{runs} runs with these seeds; at most {MAX_SWEEP_RUNS} from the page")
        with self._lock:
            pipe = self._pipeline(s.model, s.scheduler)
            began = time.perf_counter()
            library_sweep = experiment("sweep")
            # The library sweep times [k, T) with CFG kept on; other settings go through generate().
            if library_sweep is not None and s.negative_end is None and not s.cfg_off:
                cells, how = self._library_sweep(library_sweep, pipe, s, starts, seeds, progress)
            else:
                cells, how = self._generate_sweep(pipe, s, starts, seeds, progress), "one generate() call per image"
            titles = {seed: [f"seed {seed}: no negative"] + [f"start {k}" for k in starts] for seed in seeds}
            auto = s.auto_settings(pipe) if s.is_auto else None
            if auto is not None and auto.signal is Signal.ROLLOUT:  # the seeds share one start, as docs/guidance.md recommends
                start, images = self._shared_auto(pipe, s, replace(auto, per_prompt=True), seeds, progress)
                for seed in seeds:
                    cells[seed].append(images[seed])
                    titles[seed].append(f"auto: start {start} (shared)")
                how += f", then {len(seeds)} with one auto start for all seeds ({s.auto_rule}, per prompt: step {start})"
            elif s.is_auto:  # one more column: where auto starts, beside the fixed starts it can be judged by
                for n, seed in enumerate(seeds):
                    run = replace(s, seed=seed)
                    cells[seed].append(self._image(pipe, run, progress, f"auto {n + 1}/{len(seeds)}: seed {seed}"))
                    titles[seed].append(f"auto: start {run.auto_start}")
                how += f", then {len(seeds)} with the auto start ({s.auto_rule})"
        rows = [labelled_row(cells[seed], titles[seed], min_tile=128) for seed in seeds]
        grid = _stack(rows)
        status = f"{runs} images ({how}) in {time.perf_counter() - began:.1f} s; negative {s.negative_prompt!r}"
        return grid, status

    def _shared_auto(self, pipe, s: PageSettings, auto, seeds, progress: Progress) -> tuple[int, dict[int, Any]]:
        """The seeds sampled together with one rollout start for all (``auto``: an ``AutoStart(per_prompt=True)``)."""
        from .guided import sample_guided

        passes = len(_pass_steps(pipe, s.steps))

        def on_pass(pipeline, i, t, tensors):
            progress((i + 1, passes), desc=f"auto: {len(seeds)} seeds together")
            return {}

        result = sample_guided(pipe, "cfg", seeds, negative_prompt=s.negative_prompt, negative_start="auto", auto=auto,
                               negative_end=s.negative_end, prompt=s.prompt, num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                               guidance_scale_with_negative=s.guidance_scale_with_negative, output_type="pil", callback_on_step_end=on_pass)
        return result.starts[seeds[0]], {seed: result.images[seed][0] for seed in seeds}

    def _generate_sweep(self, pipe, s: PageSettings, starts, seeds, progress: Progress) -> dict[int, list]:
        """The sweep by looping ``generate()`` until ``negschedule.experiments.sweep`` exists."""
        cells: dict[int, list] = {}
        total = len(seeds) * (len(starts) + 1)
        done = 0
        for seed in seeds:
            run = replace(s, seed=seed)
            row = []
            for start in [None, *starts]:
                done += 1
                desc = f"image {done}/{total}: seed {seed}, " + ("no negative" if start is None else f"start {start}")
                timing = dict(negative_prompt=None) if start is None else dict(negative_start=start)
                row.append(self._image(pipe, run, progress, desc, **timing))
            cells[seed] = row
        return cells

    def _library_sweep(self, sweep, pipe, s: PageSettings, starts, seeds, progress: Progress):
        """The sweep through ``negschedule.experiments.sweep`` (prefix-sharing engine)."""
        progress(0.0, desc=f"sweep: {len(seeds)} seeds x {len(starts)} starts")
        result = sweep(
            pipe,
            prompt=s.prompt,
            negative_prompt=s.negative_prompt,
            starts=starts,
            seeds=seeds,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            guidance_scale_with_negative=s.guidance_scale_with_negative,
            progress=True,  # a tqdm bar, which the page's progress follows
        )
        cells: dict[int, list] = {}
        for seed in seeds:
            try:
                baseline = result.image(seed, None)
            except Exception:  # a result without the no-negative column: draw it here
                baseline = self._image(pipe, replace(s, seed=seed), progress, "no negative", negative_prompt=None)
            cells[seed] = [baseline] + [result.image(seed, k) for k in starts]
        evaluations = getattr(result, "model_evaluations", None)
        how = "negschedule.experiments.sweep" + (f", {evaluations} model evaluations" if evaluations is not None else "")
        return cells, how

    # experiments that exist once negschedule.experiments provides them

    def heatmaps(self, *inputs: Any, progress: Progress = _no_progress):
        """(strips or None, status): per step, the cross-attention of chosen words of either prompt.

        ``inputs``: the core options, then words of the prompt and words of the negative prompt
        (comma-separated). One strip per word, steps left to right, each map over the final image;
        a negative word's steps are greyed where the negative does not act.
        """
        *core, words_text, negative_words_text = inputs
        s = page_settings(*core)
        words, negative_words = _words(words_text), _words(negative_words_text)
        if not words and not negative_words:
            raise InputError("tokens", words_text, "name at least one word of the prompt or the negative prompt")
        if s.cfg_off:
            raise InputError("cfg_off", True, "the attention maps are taken with CFG kept on; untick 'CFG off'")
        if s.guidance_scale_with_negative is not None:
            raise InputError("guidance_scale_with_negative", s.guidance_scale_with_negative,
                             "the attention maps are taken at one guidance scale; clear 'guidance scale with the negative'")
        attention_maps, render_strip = experiment("attention_maps"), experiment("render_strip")
        if attention_maps is None or render_strip is None:
            return None, _missing("negschedule.attention.attention_maps")
        with self._lock:
            pipe = self._pipeline(s.model, s.scheduler)
            began = time.perf_counter()
            if s.is_auto:
                # The maps are taken with a fixed start: the one auto chooses for this seed (its image is that start's image).
                self._image(pipe, s, progress, f"auto ({s.auto_rule}): finding the start")
            progress(0.0, desc="sampling with attention capture")
            maps = attention_maps(
                pipe,
                prompt=s.prompt,
                tokens=words,
                negative_prompt=s.negative_prompt,
                negative_tokens=negative_words,
                negative_start=s.chosen().negative_start,
                negative_end=s.negative_end,
                seed=s.seed,
                num_inference_steps=s.steps,
                guidance_scale=s.guidance_scale,
            )
        strips = [render_strip(maps.image, m, label, maps.active[label]) for label, m in maps.maps.items()]
        status = (
            f"{', '.join(maps.maps)} ('+': prompt, '-': negative prompt), averaged over heads and cross-attention "
            f"layers, steps 0-{s.steps - 1} left to right, in {time.perf_counter() - began:.1f} s. Negative: {step_plan(s)}"
        )
        return _stack(strips), status

    def removal_curve(self, *inputs: Any, progress: Progress = _no_progress):
        """(plot or None, status): per start step s, the fewest steps of negative in [s, s+L) that remove the concept.

        ``inputs``: the core options (the start and end sliders are not used: the curve tries every
        start), then the concept the toy world's detector looks for, then the seeds.
        """
        *core, concept, seeds_text = inputs
        s = page_settings(*core)
        if s.negative_prompt is None:
            raise InputError("negative_prompt", None, "the removal curve needs a negative prompt")
        if s.cfg_off:
            raise InputError("cfg_off", True, "the removal curve keeps CFG on; untick 'CFG off'")
        if s.guidance_scale_with_negative is not None:
            raise InputError("guidance_scale_with_negative", s.guidance_scale_with_negative,
                             "the removal curve runs at one guidance scale; clear 'guidance scale with the negative'")
        concept = (concept or "").strip() or s.negative_prompt
        seeds = parse_seeds(seeds_text, limit=16)  # each seed is up to a full search of windows
        curve, plot = experiment("removal_curve"), experiment("removal_plot")
        if curve is None or plot is None:
            return None, _missing("negschedule.experiments.removal.removal_curve")
        from PIL import Image

        with self._lock:
            pipe = self._pipeline(s.model, s.scheduler)
            began = time.perf_counter()
            progress(0.0, desc=f"removal curve: {len(seeds)} seeds x {s.steps} starts")
            result = curve(
                pipe,
                prompt=s.prompt,
                negative_prompt=s.negative_prompt,
                concept=concept,
                seeds=seeds,
                num_inference_steps=s.steps,
                guidance_scale=s.guidance_scale,
                detector="toy",
            )
        image = Image.open(io.BytesIO(plot(result))).convert("RGB")
        summary = result.to_json()
        lengths = " ".join(f"{k}:{'-' if v is None else f'{v:g}'}" for k, v in summary["mean_lengths"].items())
        absent = [r["seed"] for r in summary["seeds"] if not r.get("baseline_present", True)]
        nothing = f" The concept is absent without the negative for seeds {absent}: nothing to remove there." if absent else ""
        status = (
            f"Concept {concept!r} (toy-world detector).{nothing} Mean L per start s (s:L, '-': never removed): {lengths}. "
            f"Critical step: {summary['critical_step']}. {summary['runs_sampled']} runs sampled "
            f"({summary['exhaustive_runs']} for an exhaustive scan), {summary['model_evaluations']} model evaluations, "
            f"{time.perf_counter() - began:.1f} s."
        )
        return image, status

    def save(self, image, file_name: Any, progress: Progress = _no_progress) -> str:
        """Save the last generated image under ``--outputs-dir``; returns the status line."""
        path = output_path(self.config.outputs_dir, file_name)
        if image is None:
            raise InputError("image", None, "generate an image first")
        from .images import save_png

        save_png(image, path, image.info.get("parameters"))
        return f"saved {path.name} in the outputs folder"


def _words(text: Any) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()] if isinstance(text, str) else []


def _missing(what: str) -> str:
    return f"Not available: this tab calls `{what}`, which this installation does not provide."


# ---- the page --------------------------------------------------------------------------------------------

# Model images are small (32x32 on the toy model): show them large, pixels sharp, file untouched.
CSS = """
.ns-pixelated img { image-rendering: pixelated; }
#ns-image img { width: 100%; height: 100%; object-fit: contain; }
"""


def _page_errors(method: Callable, n_inputs: int, track_tqdm: bool = False):
    """A Gradio handler around ``method``: InputError and failures become an in-page message, progress injected."""
    import gradio as gr

    def handler(*args):
        *values, progress = args
        try:
            return method(*values, progress=progress)
        except InputError as err:
            raise gr.Error(str(err), title="Bad input", print_exception=False) from err
        except gr.Error:
            raise
        except Exception as err:  # the page must say what failed, not go dead
            log.exception("handler %s failed", getattr(method, "__name__", method))
            raise gr.Error(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", title="Failed") from err

    # Gradio injects gr.Progress into the positional parameter whose default is one.
    params = [inspect.Parameter(f"input_{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(n_inputs)]
    params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress(track_tqdm=track_tqdm)))
    handler.__signature__ = inspect.Signature(params)
    handler.__name__ = getattr(method, "__name__", "handler")
    return handler


def build_app(ui: UI):
    """The Gradio Blocks of the page, over ``ui``'s handlers."""
    import gradio as gr

    from .schedulers import SCHEDULERS

    default_steps = 20
    with gr.Blocks(title="negschedule", analytics_enabled=False) as demo:
        gr.Markdown(
            "# negschedule\nWhen should a negative prompt act? Steps `0..k-1` use the empty prompt, "
            f"steps `k..N-1` the negative (arXiv:2406.02965). Embedded default: {ui.default_model_description()}. "
            f"Models run on: {ui.runs_on()}."
        )
        with gr.Row():
            model = gr.Dropdown(ui.model_choices(), value=DEFAULT_MODEL, label="model", elem_id="ns-model")
            refresh = gr.Button("refresh models", size="sm", scale=0)
            scheduler = gr.Dropdown([MODEL_SCHEDULER, *SCHEDULERS], value=MODEL_SCHEDULER, label="scheduler", elem_id="ns-scheduler")
        prompt = gr.Textbox(label="prompt", value="a red circle and a blue square", elem_id="ns-prompt")
        negative = gr.Textbox(
            label="negative prompt (A1111 prompt editing works: [:glasses:0.2])", value="blue square", elem_id="ns-negative"
        )
        with gr.Row():
            start_rule = gr.Dropdown(START_RULES, value=SLIDER_START, label="negative start", scale=0, min_width=260, elem_id="ns-start-rule")
            start = gr.Slider(0, default_steps, value=4, step=1, label="negative starts at step k", elem_id="ns-start")
            end = gr.Slider(0, default_steps, value=default_steps, step=1, label="negative ends before step (N = last)", elem_id="ns-end")
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=default_steps, step=1, label="steps N", elem_id="ns-steps")
            cfg = gr.Slider(1, 20, value=7.5, step=0.5, label="guidance scale", elem_id="ns-cfg")
            cfg_negative = gr.Number(value=None, label="guidance scale with the negative (empty or 0: the same)", elem_id="ns-cfg-negative",
                                     info="a later start with a stronger negative keeps more of the picture")
            seed = gr.Number(value=1, precision=0, label="seed", elem_id="ns-seed")
            cfg_off = gr.Checkbox(False, label="CFG off while the negative is off")
        core = [model, scheduler, prompt, negative, start, end, cfg_off, steps, cfg, seed, start_rule, cfg_negative]
        # With an auto start the slider's step is not used: say so by greying it out.
        start_rule.change(lambda rule: gr.update(interactive=rule == SLIDER_START), start_rule, start, queue=False)

        def follow_steps(n, k):
            # The sliders count steps of this run; the window end goes back to "the last step".
            n = int(n or 1)
            return gr.update(maximum=n, value=min(int(k or 0), n)), gr.update(maximum=n, value=n)

        steps.change(follow_steps, [steps, start], [start, end], queue=False)
        def refresh_models():
            return gr.update(choices=ui.model_choices())

        refresh.click(refresh_models, None, model, queue=False)

        with gr.Tab("generate", id="generate"):
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="ns-generate")
                show_steps = gr.Checkbox(False, label="show the latents after every step", elem_id="ns-show-steps")
            status = gr.Markdown(elem_id="ns-status")
            with gr.Row():
                image = gr.Image(label="image (download keeps the settings in the PNG)", type="pil", format="png", height=360, interactive=False, buttons=["download", "fullscreen"], elem_id="ns-image", elem_classes="ns-pixelated")
                per_step = gr.Gallery(label="step by step", columns=5, height=360, format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="ns-steps-gallery", elem_classes="ns-pixelated")
            with gr.Row():
                file_name = gr.Textbox(label="save as (a file name in --outputs-dir)", placeholder="pizza.png", interactive=ui.config.outputs_dir is not None, elem_id="ns-file-name")
                save = gr.Button("Save", size="sm", scale=0, interactive=ui.config.outputs_dir is not None, elem_id="ns-save")
            # Save takes the image from this session's server-side state, never a file the page names.
            last_image = gr.State(None)

            def generate_and_keep(*inputs, progress):
                shown, steps_shown, said = ui.generate(*inputs, progress=progress)
                return shown, steps_shown, said, shown

            go.click(_page_errors(generate_and_keep, len(core) + 1), core + [show_steps], [image, per_step, status, last_image], concurrency_id="model")
            save.click(_page_errors(ui.save, 2), [last_image, file_name], status, concurrency_id="model")

        with gr.Tab("compare", id="compare"):
            gr.Markdown("No negative | the negative from step 0 | the negative from step k (the slider above, or where auto starts it).")
            with gr.Row():
                go_compare = gr.Button("Compare", variant="primary", elem_id="ns-compare")
                compare_steps = gr.Checkbox(False, label="show every step: a row per run, a column per step ('neg': the negative acts)", elem_id="ns-compare-show-steps")
            compare_status = gr.Markdown(elem_id="ns-compare-status")
            compare_row = gr.Image(label="comparison", type="pil", format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="ns-compare-row")
            compare_images = gr.Gallery(label="the three images", columns=3, height=300, format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="ns-compare-gallery", elem_classes="ns-pixelated")
            compare_grid = gr.Image(label="step by step", show_label=False, type="pil", format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="ns-compare-steps")
            go_compare.click(_page_errors(ui.compare, len(core) + 1), core + [compare_steps], [compare_row, compare_images, compare_grid, compare_status], concurrency_id="model")

        with gr.Tab("sweep", id="sweep"):
            gr.Markdown("Rows: seeds. Columns: no negative, then the negative starting at each step.")
            with gr.Row():
                starts = gr.Textbox(value="0:20:4", label="start steps (START:STOP[:STRIDE] or 0,5,10)", elem_id="ns-starts")
                seeds = gr.Textbox(value="0,1", label="seeds", elem_id="ns-seeds")
            go_sweep = gr.Button("Sweep", variant="primary", elem_id="ns-sweep")
            sweep_status = gr.Markdown(elem_id="ns-sweep-status")
            grid = gr.Image(label="sweep grid", type="pil", format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="ns-grid")
            go_sweep.click(_page_errors(ui.sweep, len(core) + 2, track_tqdm=True), core + [starts, seeds], [grid, sweep_status], concurrency_id="model")

        with gr.Tab("attention heatmaps", id="heatmaps"):
            gr.Markdown(
                "Cross-attention of chosen words, step by step (averaged over heads and layers), over the final image. "
                "A word of the negative prompt is greyed out at the steps where the negative does not act."
            )
            with gr.Row():
                words = gr.Textbox(value="circle, square", label="words of the prompt (comma-separated)", elem_id="ns-words")
                negative_words = gr.Textbox(value="square", label="words of the negative prompt", elem_id="ns-negative-words")
            go_heat = gr.Button("Heatmaps", variant="primary", elem_id="ns-heatmaps")
            have_maps = experiment("attention_maps") is not None
            heat_status = gr.Markdown("" if have_maps else _missing("negschedule.attention.attention_maps"), elem_id="ns-heat-status")
            heat = gr.Image(label="per-step cross-attention", type="pil", format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="ns-heat")
            go_heat.click(_page_errors(ui.heatmaps, len(core) + 2, track_tqdm=True), core + [words, negative_words], [heat, heat_status], concurrency_id="model")

        with gr.Tab("removal curve", id="curve"):
            gr.Markdown(
                "For each start step s, the fewest steps L of negative guidance in [s, s+L) after which the toy world's "
                "detector no longer finds the concept (arXiv:2406.02965's U-shaped curve; its minimum is the critical step). "
                "The start sliders are not used: every start is tried."
            )
            with gr.Row():
                concept = gr.Textbox(value="", label="concept to detect, e.g. 'blue square' (empty: the negative prompt)", elem_id="ns-concept")
                curve_seeds = gr.Textbox(value="0,1,2", label="seeds", elem_id="ns-curve-seeds")
            go_curve = gr.Button("Removal curve", variant="primary", elem_id="ns-curve")
            have_curve = experiment("removal_curve") is not None
            curve_status = gr.Markdown("" if have_curve else _missing("negschedule.experiments.removal.removal_curve"), elem_id="ns-curve-status")
            curve = gr.Image(label="steps of negative needed, per start step", type="pil", format="png", interactive=False, buttons=["download", "fullscreen"], elem_id="ns-curve-plot")
            go_curve.click(_page_errors(ui.removal_curve, len(core) + 2, track_tqdm=True), core + [concept, curve_seeds], [curve, curve_status], concurrency_id="model")
    demo.queue(default_concurrency_limit=1)
    return demo


def theme():
    """Gradio's default look with system fonts: the page fetches nothing from the internet."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch(demo, config: ServeConfig, block: bool = True):
    """Serve ``demo`` on ``config.host:config.port``; never a public share link."""
    return demo.launch(
        server_name=config.host,
        server_port=int(config.port),
        share=False,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=not block,
        theme=theme(),
        css=CSS,
        footer_links=[],
    )


# ---- the CLI verb ------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    """Add ``serve`` to the ``negschedule`` command line."""
    p = subparsers.add_parser("serve", help="the web UI: generate, compare, sweep in a browser page")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 = every interface, only if you mean it)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models-dir", default=None, help="folder whose diffusers model subfolders the page may load (default: none, only the embedded model)")
    p.add_argument("--outputs-dir", default=None, help="folder the page may save PNGs into (default: none, download only)")
    p.add_argument("--device", default="auto", help="where models run: cuda, cuda:1, mps, cpu; auto: the first GPU there is, else the CPU")
    p.add_argument("--dtype", default="auto", help="float16, bfloat16, float32; auto: float16 on a GPU, as stored on the CPU")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import importlib.util
    import os

    if importlib.util.find_spec("gradio") is None:
        raise SystemExit("negschedule serve: needs gradio, which is not installed (pip install gradio)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    config = ServeConfig(
        host=args.host,
        port=args.port,
        models_dir=None if args.models_dir is None else Path(args.models_dir),
        outputs_dir=None if args.outputs_dir is None else Path(args.outputs_dir),
        device=args.device,
        dtype=args.dtype,
    ).validate()
    ui = UI(config)
    ui.preload()
    launch(build_app(ui), config)
    return 0


__all__ = ["ServeConfig", "UI", "build_app", "child_path", "launch", "list_models", "output_path", "register", "resolve_model"]
