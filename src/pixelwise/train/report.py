"""Run reports: loss / mIoU curves as PNG and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path
from typing import Any

import numpy as np


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def plot_curves(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """Plot training loss (per logged step) and validation mIoU (per validation) against the step,
    side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out_png = Path(out_png or run_dir / "curves.png")
    log = _read_csv(run_dir / "log.csv")
    metrics = [r for r in _read_csv(run_dir / "metrics.csv") if r.get("miou")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot([int(r["step"]) for r in log], [float(r["loss"]) for r in log], color="tab:blue")
    ax1.set(xlabel="step", ylabel="training loss", title="loss")
    ax1.grid(alpha=0.3)
    # Against the step, as the loss: validations may come mid-epoch (train.val_every_steps).
    ax2.plot([int(r["step"]) for r in metrics], [float(r["miou"]) for r in metrics], "o-", color="tab:green")
    ax2.set(xlabel="step", ylabel="validation mIoU", title="mIoU", ylim=(0, 1))
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def _img_tag(path: Path, width: int = 0) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    style = f' style="width:{width}px;image-rendering:pixelated"' if width else ""
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}"{style}>'


def write_report(run_dir: str | Path, *, title: str, scores: dict[str, Any], table: str,
                 samples: list[tuple[str, list[Path]]], curves: Path | None = None,
                 figures: list[Path] | None = None) -> Path:
    """Write ``run_dir/report.html`` with the scores, the per-class table, the curves, further
    ``figures`` (confusion matrix, per-class IoU) and a grid of sample rows
    (``(name, [image, truth, prediction, overlay] PNG paths)``).
    Images are embedded, so the file can be mailed or opened anywhere on its own."""
    run_dir = Path(run_dir)
    rows = []
    for name, pngs in samples:
        cells = "".join(f"<td>{_img_tag(p, 160)}</td>" for p in pngs)
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    summary = "".join(f"<li>{html.escape(k)}: <b>{v:.4f}</b></li>" for k, v in scores.items()
                      if isinstance(v, float) and not np.isnan(v))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}td,th{{padding:4px}}
pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<ul>{summary}</ul>
<h2>Per-class scores (validation set)</h2><pre>{html.escape(table)}</pre>
<h2>Training curves</h2>{_img_tag(curves) if curves else "<p>no curves</p>"}
{"<h2>Confusion matrix and per-class IoU</h2>" + "".join(_img_tag(f) for f in figures) if figures else ""}
<h2>Predictions</h2>
<table><tr><th></th><th>image</th><th>ground truth</th><th>prediction</th><th>overlay</th></tr>
{''.join(rows)}</table>
</body></html>"""
    out = run_dir / "report.html"
    tmp = run_dir / ".report.html.tmp"
    tmp.write_text(page)
    tmp.replace(out)
    return out


def _save_fig(fig, out_png: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png


def plot_confusion(matrix: Any, class_names: list[str], out_png: str | Path) -> Path:
    """Heat-map of a ``(K, K)`` confusion matrix, each row (ground-truth class) normalised to 1,
    so a class's recall is its diagonal cell whatever its pixel count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * k, 1.0 + 0.45 * k))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="prediction", ylabel="ground truth",
           title="confusion (row-normalised)")
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    if k <= 30:
        for g in range(k):
            for p in range(k):
                ax.text(p, g, f"{norm[g, p]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[g, p] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save_fig(fig, Path(out_png))


def plot_class_iou(iou: Any, class_names: list[str], out_png: str | Path) -> Path:
    """Horizontal bars of per-class IoU (NaN, a class absent from truth and prediction, drawn as 0
    and labelled ``n/a``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(iou, dtype=np.float64)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.3 * k))
    ax.barh(range(k), np.nan_to_num(values), color="tab:green")
    ax.set(yticks=range(k), xlim=(0, 1), xlabel="IoU", title=f"per-class IoU (mIoU {np.nanmean(values):.3f})"
           if np.isfinite(values).any() else "per-class IoU")
    ax.set_yticklabels(class_names)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(min(np.nan_to_num(v), 0.85) + 0.01, i, "n/a" if np.isnan(v) else f"{v:.3f}", va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save_fig(fig, Path(out_png))
