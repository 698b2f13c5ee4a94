"""What a run writes while it trains: ``log.csv`` (per logged step), ``metrics.csv`` (per
validation), a TensorBoard event file, and the PNG plots at the end. Only rank 0 writes;
on the other ranks every method is a no-op.
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path
from typing import Any

from ..optional import require


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can work (the ``tensorboard`` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row``; write the header first if the file is new."""
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_csv(path: Path, max_step: int) -> None:
    """Drop rows logged after step ``max_step`` (a resumed run redoes those steps)."""
    if not path.exists():
        return
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= max_step]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    tmp.replace(path)


class RunLogger:
    """CSV + TensorBoard logging for one run folder.

    Args:
        out_dir: the run folder.
        enabled: False on ranks other than 0.
        tensorboard: write ``out_dir/tensorboard/`` event files (``None``: if importable).
    """

    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool | None) -> None:
        self.out_dir, self.enabled = out_dir, enabled
        self.use_tb = enabled and (tensorboard_available() if tensorboard is None else tensorboard)
        self._writer = None

    @property
    def writer(self):
        """The TensorBoard ``SummaryWriter``, opened on first use (``None`` when off)."""
        if self.use_tb and self._writer is None:
            SummaryWriter = require("torch.utils.tensorboard", "TensorBoard logging").SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        return self._writer

    def fresh(self) -> None:
        """A new (not resumed) run: forget old logs in the folder (call before the first write)."""
        if self.enabled:
            for name in ("log.csv", "metrics.csv"):
                (self.out_dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.out_dir / "tensorboard", ignore_errors=True)

    def resumed(self, step: int) -> None:
        """A resumed run: drop CSV rows after ``step``. (TensorBoard shows the redone steps
        twice, as it does for any restarted writer; its newest points are the resumed run's.)"""
        if self.enabled:
            truncate_csv(self.out_dir / "log.csv", step)
            truncate_csv(self.out_dir / "metrics.csv", step)

    def step(self, row: dict[str, Any]) -> None:
        """One ``log.csv`` row (``step`` first) and the same scalars under ``train/``."""
        if not self.enabled:
            return
        append_csv(self.out_dir / "log.csv", row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, row["step"])

    def metrics(self, row: dict[str, Any]) -> None:
        """One ``metrics.csv`` row (per validation) and its scalars under ``val/``."""
        if not self.enabled:
            return
        append_csv(self.out_dir / "metrics.csv", row)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"val/{key}", value, row["step"])
            self.writer.flush()

    def plots(self, *, confusion: Any | None, class_names: list[str]) -> list[Path]:
        """``curves.png`` (loss, mIoU), ``confusion.png`` and ``class_iou.png`` in the run folder."""
        if not self.enabled:
            return []
        from .report import plot_class_iou, plot_confusion, plot_curves

        written = [plot_curves(self.out_dir)]
        if confusion is not None:
            written.append(plot_confusion(confusion.matrix.cpu().numpy(), class_names, self.out_dir / "confusion.png"))
            written.append(plot_class_iou(confusion.iou().numpy(), class_names, self.out_dir / "class_iou.png"))
        return written

    def close(self) -> None:
        """Flush and close the TensorBoard writer (its thread would otherwise outlive the run)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.use_tb = False
