"""Every `pixelwise train` ends with report.html, on any dataset; `eval --report` writes one too."""

import numpy as np
import yaml
from PIL import Image

from pixelwise.cli import main


def _folder_dataset(root, n=6, size=(40, 48)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros(size, np.uint8)
            y, x = rng.integers(0, 20, 2)
            mask[y:y + 16, x:x + 20] = 1 + i % 2
            image = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
            image[mask == 1] += 150
            image[mask == 2, 0] = 250
            Image.fromarray(image).save(root / split / "images" / f"{split}{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{split}{i}.png")


def test_train_on_a_folder_writes_the_report_and_eval_can_write_one(tmp_path, capsys):
    _folder_dataset(tmp_path / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
        "data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_classes": 3,
                 "class_names": ["background", "bright", "red"], "crop_size": 32, "batch_size": 3},
        "train": {"max_steps": 4, "out_dir": str(tmp_path / "run"), "log_every": 1}}))
    assert main(["train", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    page = (tmp_path / "run" / "report.html").read_text()
    assert f"report: {tmp_path / 'run' / 'report.html'}" in out
    assert "bright" in page and "red" in page and "miou" in page  # per-class table and scores
    assert page.count("data:image/png;base64,") == 1 + 2 + 6 * 4  # curves, confusion + IoU, 6 validation rows
    assert "val0" in page  # rows are named after the dataset's files
    pred = np.array(Image.open(tmp_path / "run" / "predictions" / "val_000.png"))
    assert pred.shape == (40, 48) and pred.max() < 3  # at the image's own size, class indices
    shown = np.array(Image.open(tmp_path / "run" / "predictions" / "val_000_image.png"))
    original = np.array(Image.open(tmp_path / "data" / "val" / "images" / "val0.png"))
    assert np.abs(shown.astype(int) - original).max() <= 1  # normalisation undone exactly
    assert main(["eval", str(cfg), "--quiet", "--report", str(tmp_path / "evalrep")]) == 0
    assert (tmp_path / "evalrep" / "report.html").is_file()
    assert main(["train", str(cfg), "--quiet", "--overwrite", "--no-report"]) == 0
    assert not (tmp_path / "run" / "report.html").exists()  # --overwrite cleared it, --no-report wrote none
