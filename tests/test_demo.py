"""`pixelwise demo`: the whole path on the synthetic set, including the promised mIoU."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.demo import run_demo


def test_demo_writes_report_curves_and_predictions(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(str(out), overrides={"data": {"train_samples": 48, "val_samples": 8, "crop_size": 32},
                                           "train": {"epochs": 1}}, progress=False)
    assert result["steps"] == 3
    for name in ("report.html", "curves.png", "log.csv", "metrics.csv", "best/model.safetensors",
                 "last/trainer.pt", "config.yaml"):
        assert (out / name).exists(), name
    page = Path(result["report"]).read_text()
    assert "mIoU" in page and "circle" in page and "star" in page
    assert page.count("data:image/png;base64,") == 1 + 2 + 6 * 4  # curves, confusion + class IoU, 6 rows of 4
    pred = np.array(Image.open(out / "predictions" / "val_000.png"))
    assert pred.shape == (32, 32) and pred.max() < 5
    assert Image.open(out / "curves.png").size[0] > 400


@pytest.mark.timeout(1800)  # about 5 minutes on a quiet 2-core AVX2 machine (fp32); far slower when shared
def test_full_demo_reaches_the_promised_miou(tmp_path, capsys):
    """The README promises validation mIoU >= 0.80 from `pixelwise demo` (about 5 minutes here)."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    miou = float(re.search(r"final validation mIoU: ([0-9.]+)", out).group(1))
    assert miou >= 0.80, out
    assert "report: " in out and (tmp_path / "demo" / "report.html").exists()
