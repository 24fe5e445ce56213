"""What a finished experiment leaves in its folder: results, tables, the grid, plots, report.html.

This module owns the presentation: a labelled grid (rows: prompt and seed; first column the
no-negative image, then one column per start step or window), ``results.json`` (settings, model
evaluations, the per-column summary and every image's measurements), ``metrics.csv`` and
``metrics.json`` (one row per image), plots of the summary, and a self-contained ``report.html``
that shows them with the settings. Every file is written atomically and depends only on the
results, never on the clock, so a resumed experiment writes the same bytes.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..images import png_bytes
from .store import write_bytes_atomic, write_json_atomic, write_text_atomic

CELL = 128  # grid cells are at least this many pixels wide: tiny models make 32 px images


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def labelled_grid(rows: Sequence[Sequence[Any]], column_labels: Sequence[str], row_labels: Sequence[str]):
    """One image: a header row of column labels, a left column of row labels, the images in cells."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    scale = max(1, -(-CELL // w))
    gap = 2  # white line between cells
    cw, ch = w * scale + gap, h * scale + gap
    font = _font()
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 8 + max(draw_probe.textlength(label, font=font) for label in row_labels)
    top = 22
    grid = Image.new("RGB", (int(left) + cw * len(column_labels), top + ch * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(column_labels):
        draw.text((int(left) + c * cw + 4, 4), label, fill="black", font=font)
    for r, (row, label) in enumerate(zip(rows, row_labels)):
        draw.text((4, top + r * ch + ch // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(row):
            cell = image.convert("RGB").resize((cw - gap, ch - gap), Image.NEAREST)
            grid.paste(cell, (int(left) + c * cw, top + r * ch))
    return grid


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    # No date or software metadata: equal results give equal files.
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def summary_plot(summary: Sequence[dict[str, Any]]) -> bytes:
    """SSIM and the removal / reverse-activation rates against the column (start step or window)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = [row["column"] for row in summary]
    x = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(labels) + 2), 3.2))
    for key, name, style in (
        ("ssim", "SSIM to no-negative", "o-"),
        ("removal_rate", "removal rate", "s-"),
        ("reverse_activation_rate", "reverse-activation rate", "^-"),
        ("objects_preserved", "objects preserved", "d-"),
    ):
        ys = [row[key] for row in summary]
        if any(y is not None for y in ys):
            ax.plot([xi for xi, y in zip(x, ys) if y is not None], [y for y in ys if y is not None], style, label=name)
    ax.set_xticks(x, labels, rotation=90 if len(labels) > 12 else 0)
    ax.set_xlabel("negative starts at step (or window)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _figure_png(fig)


def write_table(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    write_text_atomic(path, buffer.getvalue())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def html_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    fields = list(rows[0])
    head = "".join(f"<th>{html.escape(f)}</th>" for f in fields)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(row.get(f))}</td>" for f in fields) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%;image-rendering:pixelated}"
    )
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{content}")
    parts.append("</body></html>\n")
    return "".join(parts)


def settings_table(settings: dict[str, Any]) -> str:
    return html_table([{"setting": k, "value": json.dumps(v)} for k, v in settings.items()])


def write_sweep(result, out: Path) -> None:
    """Write results.json, metrics.csv/.json, grid.png, summary.png and report.html for a sweep."""
    out = Path(out)
    data = result.to_json()
    write_json_atomic(out / "results.json", data)
    write_json_atomic(out / "metrics.json", data["images"])
    write_table(out / "metrics.csv", data["images"])
    write_table(out / "summary.csv", data["summary"])
    config = result.config
    rows, labels = [], []
    for p, seed in config.units():
        rows.append([_cell(result, p, seed, c) for c in result.columns])
        labels.append(f"p{p} seed {seed}" if len(config.prompts) > 1 else f"seed {seed}")
    write_bytes_atomic(out / "grid.png", png_bytes(labelled_grid(rows, result.columns, labels)))
    write_bytes_atomic(out / "summary.png", summary_plot(data["summary"]))
    saving = data["model_evaluations"] / data["independent_evaluations"] if data["independent_evaluations"] else None
    evaluations = html_table([{
        "model evaluations": data["model_evaluations"],
        "as independent generate() calls": data["independent_evaluations"],
        "ratio": saving,
    }])
    prompts = "".join(f"<li>p{i}: {html.escape(p)}</li>" for i, p in enumerate(config.prompts))
    page = html_page(
        f"Critical-step sweep: negative '{config.negative_prompt}'",
        [
            ("Grid", f"<p>Rows: prompt and seed. First column: no negative; then the step the negative starts at (or its window [s, e)).</p><ol start='0'>{prompts}</ol><img src='grid.png'>"),
            ("Summary per start step", html_table(data["summary"]) + "<p><img src='summary.png'></p>"),
            ("Model evaluations", evaluations),
            ("Settings", settings_table(data["settings"])),
            ("Files", "<p>results.json, metrics.csv, metrics.json, summary.csv, images/</p>"),
        ],
    )
    write_text_atomic(out / "report.html", page)


def _cell(result, p: int, seed: int, label: str):
    key = (p, seed, label)
    if key in result._images:
        return result._images[key]
    record = result.records[result.config.units().index((p, seed))]
    cell = next(c for c in record["cells"] if c["column"] == label)
    return result.store.load_image(cell["image"])


def removal_plot(curve) -> bytes:
    """L(s) per seed (thin) and their mean (thick), the mean's minimum - the critical step - marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    T = curve.config.num_inference_steps
    starts = curve.config.all_starts()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for record in curve.records:
        xs = [s for s in starts if record["lengths"][str(s)] is not None]
        ax.plot(xs, [record["lengths"][str(s)] for s in xs], "-", alpha=0.35, lw=1, label=f"seed {record['seed']}")
    mean = curve.mean_lengths()
    xs = [s for s in starts if mean[s] is not None]
    if xs:
        ax.plot(xs, [mean[s] for s in xs], "o-", color="black", lw=2, label="mean")
        best = min(xs, key=lambda s: (mean[s], s))
        ax.plot([best], [mean[best]], marker="*", color="red", markersize=16, linestyle="none",
                label=f"minimum: critical step {best}")
    # Starts from which even the negative to the last step leaves the concept: L > T - s.
    undefined = [s for s in starts if mean[s] is None and any(r["baseline_present"] for r in curve.records)]
    if undefined:
        ax.plot(undefined, [T - s + 1 for s in undefined], "x", color="grey", label="not removed even by [s, T)")
    ax.set_xlabel("negative starts at step s")
    ax.set_ylabel("fewest steps L that remove it")
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(0, T + 1.5)
    ax.grid(alpha=0.3)
    if len(curve.records) <= 8 or xs:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _figure_png(fig)


def write_removal_curve(curve, out: Path) -> None:
    """Write curve.json (with model evaluations and the exhaustive counts), curve.csv, curve.png, report.html."""
    out = Path(out)
    data = curve.to_json()
    write_json_atomic(out / "curve.json", data)
    rows = [{"seed": r["seed"], "start": int(s), "length": v, "baseline_present": r["baseline_present"]}
            for r in curve.records for s, v in r["lengths"].items()]
    write_table(out / "curve.csv", rows)
    write_bytes_atomic(out / "curve.png", removal_plot(curve))
    cost = html_table([{
        "runs sampled": data["runs_sampled"],
        "exhaustive runs": data["exhaustive_runs"],
        "model evaluations": data["model_evaluations"],
        "exhaustive evaluations": data["exhaustive_evaluations"],
        "ratio": data["model_evaluations"] / data["exhaustive_evaluations"] if data["exhaustive_evaluations"] else None,
    }])
    table = [{"start": s, "mean L": v, **{f"seed {r['seed']}": r["lengths"][str(s)] for r in curve.records}}
             for s, v in curve.mean_lengths().items()]
    page = html_page(
        f"Removal curve: '{curve.config.concept}' by negative '{curve.config.negative_prompt}'",
        [
            ("Curve", f"<p>Critical step (minimum of the mean): {data['critical_step']}</p><img src='curve.png'>"),
            ("Cost", cost + "<p>Binary search over L per start (removal assumed monotone in L), all starts in "
                     "parallel rounds, every sampled prefix reused.</p>"),
            ("L(s)", html_table(table)),
            ("Settings", settings_table(data["settings"])),
        ],
    )
    write_text_atomic(out / "report.html", page)
