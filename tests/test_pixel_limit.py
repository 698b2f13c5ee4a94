"""Images and masks that declare more pixels than the limit are refused from their header."""

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from pixelwise.config import DataCfg
from pixelwise.data.check import check_dataset
from pixelwise.data.io import decode_image, read_image, read_mask
from pixelwise.errors import DataError


def huge_png(path, width, height):
    """A valid all-black grey PNG of ``width`` x ``height``: tiny on disk, huge when decoded."""
    row = b"\x00" + bytes(width)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_a_small_file_declaring_900_megapixels_is_refused_before_decoding(tmp_path):
    bomb = huge_png(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 2_000_000  # under 2 MB on disk, 2.7 GB as RGB
    for read in (read_image, read_mask):
        start = time.perf_counter()
        with pytest.raises(DataError, match=r"bomb.png' is 900,000,000 pixels, more than the limit of 200,000,000"):
            read(bomb)
        assert time.perf_counter() - start < 1.0  # the header only: decoding would take seconds and GBs
    with pytest.raises(DataError, match="PIXELWISE_MAX_IMAGE_PIXELS"):
        decode_image(bomb.read_bytes(), "upload.png")


def test_the_limit_follows_the_environment_and_names_the_size(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    assert read_image(path).shape == (30, 40, 3)
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DataError, match=r"a.png' is 40x30 \(1,200 pixels\), more than the limit of 1,000"):
        read_image(path)
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "1200")
    assert read_mask(path).shape == (30, 40)  # exactly at the limit is fine
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match="must be a positive integer, got 'lots'"):
        read_image(path)


def test_check_reports_the_oversized_file_and_checks_the_rest(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(3):
            (tmp_path / split / "images").mkdir(parents=True, exist_ok=True)
            (tmp_path / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
                tmp_path / split / "images" / f"p{i}.png")
            Image.fromarray(rng.integers(0, 3, (24, 32), dtype=np.uint8)).save(tmp_path / split / "masks" / f"p{i}.png")
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(tmp_path / "train" / "images" / "big.png")
    Image.fromarray(np.zeros((60, 60), np.uint8)).save(tmp_path / "train" / "masks" / "big.png")
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "2000")  # 60x60 is over, 32x24 under
    report = check_dataset(DataCfg(dataset="folder", root=str(tmp_path), num_classes=3))
    train, val = report.splits
    assert not report.ok and not val.problems
    problems = [p for p in train.problems if "big.png" in p.path]
    assert problems and all("60x60 (3,600 pixels), more than the limit of 2,000" in p.message for p in problems)
    assert train.pairs == 4  # every pair was looked at, the big one included
    assert "big.png" in report.format()
