"""``toy eval``: the shapes-world model's quality figures and the paper's questions, measured.

Every figure comes from the exact detector on images sampled with fixed seeds from held-out
scenes (scene seeds from ``scene_seed`` on, far above the training set's), so two runs of the same
command give the same numbers. What it measures:

- two requested shapes, no negative: how often each / both are drawn;
- a negative naming one of the two, from each start step: how often it is removed, how often the
  other stays, SSIM to the no-negative image, how many of the no-negative image's other objects stay;
- night captions that do not name the moon: how often the moon comes anyway (the implied object),
  and with the negative "moon" from each start step: removal, SSIM, objects kept, and reverse
  activation (a moon where the no-negative image had none);
- a negative naming a shape the caption does not request: how often that shape appears
  (reverse activation of an object) against the no-negative rate;
- the detector's agreement with the ground truth on the model VAE's reconstructions.

Results go to ``<out>/eval.json`` (with the targets of the issue and whether each is met) and a few
picture grids ``<out>/*.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..experiments.metrics import ssim
from ..schedulers import scheduler_name, set_scheduler
from .detector import detect
from .world import COLOURS, SHAPES, SHIPPED_WORLD, WORLDS, WorldConfig, caption, make_scene, render

TARGETS = {  # the acceptance figures
    "two_objects_both_present": 0.85,
    "negative_named_object_absent": 0.75,
    "negative_other_object_kept": 0.90,
    "implied_moon_present_unnamed": 0.70,
    "moon_removed_best_start": 0.60,
}


@dataclass
class EvalConfig:
    """What ``toy eval`` measures and how; the command's options mirror these fields."""

    out: str = "runs/toyworld-eval"  # folder for eval.json and the picture grids
    model: str = ""  # pipeline folder; "" = the model shipped in the package
    n: int = 200  # captions per set (held out: scene seeds scene_seed, scene_seed+1, ...)
    scene_seed: int = 1_000_000  # first held-out scene seed (training uses 0..n_scenes-1)
    image_seed: int = 0  # image i is sampled with torch seed image_seed + i
    steps: int = 20  # denoising steps
    scheduler: str = "ddim"  # sampler, a name of negschedule.schedulers (the shipped model's own is DDIM)
    guidance_scale: float = 7.5  # classifier-free guidance scale (the pipeline's default)
    starts: tuple[int, ...] = (0, 2, 4, 6, 8, 10, 14)  # negative start steps for the curves
    batch: int = 50  # images per pipeline call (memory bound)
    threads: int = 2  # torch CPU threads
    device: str = "cpu"  # where the model runs (cuda, auto, ...); the recorded figures are the CPU's
    dtype: str = ""  # a torch dtype name (float16, ...); "" = as stored (float32)


def _load(cfg: EvalConfig):
    from diffusers import StableDiffusionPipeline

    from .train import ASSET_DIR

    folder = Path(cfg.model) if cfg.model else ASSET_DIR
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if scheduler_name(pipe.scheduler) != cfg.scheduler:  # the model's own sampler is kept as loaded
        set_scheduler(pipe, cfg.scheduler)
    from ..devices import resolve_device, resolve_dtype

    device = resolve_device(cfg.device, argument="--device")
    return pipe.to(device, resolve_dtype(cfg.dtype or None, device, argument="--dtype"))


def sample(pipe, prompts: list[str], seeds: list[int], cfg: EvalConfig, negative=None, start: int = 0) -> np.ndarray:
    """Images (N x H x W x 3 floats in [0, 1]) for ``prompts``; ``negative`` (str or per-prompt list) from step ``start``."""
    from ..generate import generate

    out = []
    for i in range(0, len(prompts), cfg.batch):
        chunk = prompts[i : i + cfg.batch]
        kwargs = dict(prompt=chunk, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, output_type="np",
                      generator=[torch.Generator().manual_seed(s) for s in seeds[i : i + cfg.batch]])
        if negative is not None:
            neg = negative[i : i + cfg.batch] if isinstance(negative, list) else negative
            kwargs.update(negative_prompt=neg, negative_start=start)
        out.append(generate(pipe, **kwargs).images)
    return np.concatenate(out)


def _names(objects) -> set[str]:
    return {o.name for o in objects}


def two_object_set(cfg: EvalConfig, world: WorldConfig = WORLDS[SHIPPED_WORLD]) -> list[tuple[str, list[str], str]]:
    """Held-out two-shape captions: (caption, the two requested names, an unrequested shape name)."""
    rows, seed = [], cfg.scene_seed
    while len(rows) < cfg.n:
        scene = make_scene(seed, n_objects=2, world=world)
        rng = np.random.default_rng(seed)
        seed += 1
        if len(scene.objects) != 2:
            continue
        text = caption(scene, rng, world)
        requested = [o.name for o in scene.objects]
        others = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in requested]
        rows.append((text, requested, others[int(rng.integers(len(others)))]))
    return rows


def night_scenes_unnamed_moon(first_seed: int, n: int,
                              world: WorldConfig = WORLDS[SHIPPED_WORLD]) -> list[tuple[object, str]]:
    """``n`` held-out night scenes from ``first_seed`` on, each with a caption that does not name the moon."""
    rows, seed = [], first_seed
    while len(rows) < n:
        scene = make_scene(seed, night=True, world=world)
        rng = np.random.default_rng(seed)
        seed += 1
        text = caption(scene, rng, world)
        while "moon" in text:
            text = caption(scene, rng, world)
        rows.append((scene, text))
    return rows


def night_set(cfg: EvalConfig, world: WorldConfig = WORLDS[SHIPPED_WORLD]) -> list[str]:
    """Held-out night captions that do not name the moon."""
    return [text for _, text in night_scenes_unnamed_moon(cfg.scene_seed + 500_000, cfg.n, world)]


def _rest_kept(base_objects, objects, removed: str) -> float:
    """Share of the no-negative image's objects (other than ``removed``) still there."""
    rest = _names(base_objects) - {removed}
    return 1.0 if not rest else len(rest & _names(objects)) / len(rest)


def _curve_point(base_images, base_objects, images, negated: list[str]) -> dict:
    objects = [detect(im) for im in images]
    absent = [name not in _names(o) for name, o in zip(negated, objects)]
    reverse = [name in _names(o) and name not in _names(b) for name, o, b in zip(negated, objects, base_objects)]
    return {
        "absent": float(np.mean(absent)),
        "reverse_activation": float(np.mean(reverse)),
        "ssim_to_no_negative": float(np.mean([ssim(a, b, data_range=1.0) for a, b in zip(base_images, images)])),
        "rest_kept": float(np.mean([_rest_kept(b, o, n) for b, o, n in zip(base_objects, objects, negated)])),
    }, objects


def _grid(rows: list[np.ndarray], path: Path, scale: int = 3) -> None:
    """Save rows of images (each row: N x H x W x 3 in [0, 1]) as one picture."""
    h, w = rows[0].shape[1:3]
    canvas = np.ones((len(rows) * (h + 2), rows[0].shape[0] * (w + 2), 3))
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            canvas[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = im
    from ..images import save_png

    picture = Image.fromarray((canvas * 255).round().astype(np.uint8))
    save_png(picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST), path)


def detector_on_reconstructions(pipe, n: int = 500, first_seed: int = 2_000_000) -> float:
    """Share of held-out scenes whose VAE reconstruction the detector reads exactly as the ground truth."""
    scenes = [make_scene(first_seed + i) for i in range(n)]
    x = torch.from_numpy(np.stack([np.asarray(render(s)) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        x = x.to(pipe.vae.device, pipe.vae.dtype)
        rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    images = ((rec.float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    hits = [sorted(_names(detect(im))) == sorted(o.name for o in s.truth) for im, s in zip(images, scenes)]
    return float(np.mean(hits))


class _Points:
    """``toy eval``'s measurements as units of ``experiments.store.ResultStore`` in ``cfg.out``.

    Every sampled set of images (a caption set with no negative, or one negative from one start)
    becomes a point: its figures, and the first ten images when a grid shows them. A point is on
    disk as soon as it is measured, so a rerun of the same command skips it; the no-negative
    images every point is compared with are sampled again when a point needs them (the same seeds
    give the same images), never stored whole.
    """

    def __init__(self, store, pipe, cfg: EvalConfig, seeds: list[int], progress=None):
        self.store, self.pipe, self.cfg, self.seeds = store, pipe, cfg, seeds
        self.progress = progress  # called with (points done, points in all, name, read back?) after each point
        self.total = 5 + 3 * len(cfg.starts)  # detector, two-shape figures and grid, unrequested base, moon base; 3 curves
        self.done = 0
        self._images: dict[str, tuple] = {}

    def images(self, key: str, prompts: list[str]) -> tuple[np.ndarray, list]:
        """The no-negative images of a caption set and their detections, sampled once per run."""
        if key not in self._images:
            images = sample(self.pipe, prompts, self.seeds, self.cfg)
            self._images[key] = (images, [detect(im) for im in images])
        return self._images[key]

    def get(self, name: str, measure, grid: bool = False) -> tuple[dict, np.ndarray | None]:
        """The point ``name``'s figures (and grid images): read back, or ``measure()``-d and stored."""
        resumed = self.store.done(name)
        if not resumed:
            value, images = measure()
            record = {"value": value}
            if grid:
                record["grid"] = self.store.save_array(f"points/{name}.npy", np.asarray(images[:10], dtype=np.float32))
            self.store.commit(name, record)
        record = self.store.record(name)
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, name, resumed)
        return record["value"], (self.store.load_array(record["grid"]) if grid else None)


def evaluate(cfg: EvalConfig, progress=None) -> dict:
    """Run every measurement; writes and returns the figures. A rerun of an interrupted ``cfg`` resumes.

    ``progress``: called after each measured point with (points done, points in all, its name, read back?).
    """
    from ..experiments.store import ResultStore, write_text_atomic

    torch.set_num_threads(cfg.threads)
    store = ResultStore(cfg.out)
    t0 = time.time()
    pipe = _load(cfg)
    from ..models import weights_fingerprint

    # What the figures depend on (batch too: it can move the last bits), the model's weights included.
    # Device and dtype only off their defaults, so that folders measured before they existed still resume.
    defaults = {"device": EvalConfig.device, "dtype": EvalConfig.dtype}
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "threads") and defaults.get(k, object()) != v}
    store.open({**settings, "weights": weights_fingerprint(cfg.model or None)})
    out = Path(cfg.out)
    seeds = [cfg.image_seed + i for i in range(cfg.n)]
    points = _Points(store, pipe, cfg, seeds, progress)
    figures: dict = {"config": asdict(cfg)}

    figures["detector_on_vae_reconstructions"] = points.get("detector", lambda: (detector_on_reconstructions(pipe), None))[0]

    rows = two_object_set(cfg)
    prompts = [r[0] for r in rows]

    def two_objects():
        _, base_objects = points.images("two", prompts)
        each = [[name in _names(o) for name in r[1]] for r, o in zip(rows, base_objects)]
        return {"both_present": float(np.mean([all(e) for e in each])), "each_present": float(np.mean(each))}, None

    figures["two_objects"] = points.get("two-objects", two_objects)[0]

    # A negative naming one of the two requested shapes (alternating which), from each start step.
    negated = [r[1][i % 2] for i, r in enumerate(rows)]
    kept_name = [r[1][1 - i % 2] for i, r in enumerate(rows)]

    def named(k: int):
        base, base_objects = points.images("two", prompts)
        images = sample(pipe, prompts, seeds, cfg, negative=negated, start=k)
        point, objects = _curve_point(base, base_objects, images, negated)
        point["other_kept"] = float(np.mean([name in _names(o) for name, o in zip(kept_name, objects)]))
        return point, images

    grid_rows = [points.get("two-base", lambda: (None, points.images("two", prompts)[0]), grid=True)[1]]
    curve = {}
    for k in cfg.starts:
        curve[str(k)], images = points.get(f"named-{k}", lambda k=k: named(k), grid=True)
        grid_rows.append(images)
    figures["negative_object"] = curve
    _grid(grid_rows, out / "negative_object.png")

    # A negative naming a shape the caption does not request: does it appear because it was named?
    unrequested = [r[2] for r in rows]

    def base_rate():
        _, base_objects = points.images("two", prompts)
        return float(np.mean([name in _names(o) for name, o in zip(unrequested, base_objects)])), None

    def unrequested_point(k: int):
        base, base_objects = points.images("two", prompts)
        images = sample(pipe, prompts, seeds, cfg, negative=unrequested, start=k)
        return _curve_point(base, base_objects, images, unrequested)[0], None

    curve = {"no_negative_appears": points.get("unrequested-base", base_rate)[0]}
    for k in cfg.starts:
        curve[str(k)] = points.get(f"unrequested-{k}", lambda k=k: unrequested_point(k))[0]
    figures["negative_unrequested_object"] = curve

    # The implied object: night captions that do not name the moon.
    night = night_set(cfg)

    def moon_unnamed():
        base_n, base_n_objects = points.images("night", night)
        return float(np.mean(["moon" in _names(o) for o in base_n_objects])), base_n

    def moon(k: int):
        base_n, base_n_objects = points.images("night", night)
        images = sample(pipe, night, seeds, cfg, negative="moon", start=k)
        return _curve_point(base_n, base_n_objects, images, ["moon"] * len(night))[0], images

    figures["moon_unnamed_present"], base_grid = points.get("moon-unnamed", moon_unnamed, grid=True)
    curve, grid_rows = {}, [base_grid]
    for k in cfg.starts:
        curve[str(k)], images = points.get(f"moon-{k}", lambda k=k: moon(k), grid=True)
        grid_rows.append(images)
    figures["negative_moon"] = curve
    _grid(grid_rows, out / "negative_moon.png")

    best_k = max(cfg.starts, key=lambda k: figures["negative_moon"][str(k)]["absent"])
    measured = {
        "two_objects_both_present": figures["two_objects"]["both_present"],
        "negative_named_object_absent": figures["negative_object"]["0"]["absent"] if 0 in cfg.starts else None,
        "negative_other_object_kept": figures["negative_object"]["0"]["other_kept"] if 0 in cfg.starts else None,
        "implied_moon_present_unnamed": figures["moon_unnamed_present"],
        "moon_removed_best_start": figures["negative_moon"][str(best_k)]["absent"],
    }
    figures["summary"] = {
        name: {"measured": value, "target": TARGETS[name], "met": value is not None and value >= TARGETS[name]}
        for name, value in measured.items()
    }
    figures["summary"]["moon_best_start"] = best_k
    figures["seconds"] = round(time.time() - t0)
    write_text_atomic(out / "eval.json", json.dumps(figures, indent=2))
    write_text_atomic(out / "eval.md", report(figures))
    return figures


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def report(figures: dict) -> str:
    """The figures of ``evaluate`` as Markdown tables (what docs/toyworld.md shows)."""
    cfg = figures["config"]
    lines = [f"{cfg['n']} held-out captions per set, {cfg['steps']} {cfg.get('scheduler', 'ddim')} steps, "
             f"guidance {cfg['guidance_scale']}, "
             f"image seeds {cfg['image_seed']}..{cfg['image_seed'] + cfg['n'] - 1}.", "",
             "| figure | measured | target | met |", "|---|---|---|---|"]
    for name, row in figures["summary"].items():
        if isinstance(row, dict):
            lines.append(f"| {name.replace('_', ' ')} | {_pct(row['measured'])} | >= {_pct(row['target'])} | "
                         f"{'yes' if row['met'] else 'no'} |")
    lines += ["", f"Best start step for the moon negative: {figures['summary']['moon_best_start']}. "
              f"Detector agreement with ground truth on VAE reconstructions: "
              f"{_pct(figures['detector_on_vae_reconstructions'])}. "
              f"Two requested shapes, each present: {_pct(figures['two_objects']['each_present'])}.", ""]
    curves = [("negative_object", "Negative naming one of the two requested shapes", "named shape absent"),
              ("negative_moon", "Negative \"moon\" on night captions that do not name it", "moon absent"),
              ("negative_unrequested_object", "Negative naming a shape the caption does not request", "shape absent")]
    for key, title, absent in curves:
        curve = figures[key]
        other = "other shape kept | " if key == "negative_object" else ""
        lines += [f"**{title}**" + (f" (no negative: the shape appears in {_pct(curve['no_negative_appears'])})"
                                       if "no_negative_appears" in curve else ""), "",
                  f"| start step | {absent} | {other}reverse activation | SSIM to no-negative | other objects kept |",
                  "|---|---|---|---|---|" + ("---|" if other else "")]
        for k in cfg["starts"]:
            p = curve[str(k)]
            kept = f"{_pct(p['other_kept'])} | " if other else ""
            lines.append(f"| {k} | {_pct(p['absent'])} | {kept}{_pct(p['reverse_activation'])} | "
                         f"{p['ssim_to_no_negative']:.3f} | {_pct(p['rest_kept'])} |")
        lines.append("")
    return "\n".join(lines)
