"""The Reader protocol (data/reader.py) and the labelled-dataset base (data/labelled.py)."""

from pathlib import Path

import numpy as np
import pytest

import pixelwise.data  # noqa: F401 - registers the readers
from pixelwise.config import DataCfg
from pixelwise.data import class_names
from pixelwise.data.check import check_dataset, preflight
from pixelwise.data.labelled import LabelledDataset
from pixelwise.data.reader import Reader, RegisteredReader, get_reader
from pixelwise.data.synthetic import CLASS_NAMES
from pixelwise.data.voc import CLASS_NAMES as VOC_NAMES
from pixelwise.errors import ConfigError, DataError
from pixelwise.registry import DATASETS


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registered_reader_satisfies_the_protocol(name):
    entry = DATASETS[name]
    assert isinstance(entry, Reader), f"{name} is registered without pixelwise.data.reader.reader(...)"
    assert entry.name == name
    assert all(isinstance(getattr(entry, a), bool) for a in ("raw_images", "preflight", "folder_layout"))
    assert callable(entry.class_names)


def test_class_names_come_from_the_reader():
    assert class_names(DataCfg()) == list(CLASS_NAMES)
    assert class_names(DataCfg(dataset="voc", num_classes=21)) == list(VOC_NAMES)
    assert class_names(DataCfg(dataset="folder", num_classes=2)) == ["class_0", "class_1"]
    assert class_names(DataCfg(dataset="folder", num_classes=2, class_names=["sky", "sea"])) == ["sky", "sea"]


def test_a_new_reader_declares_its_names_and_a_plain_builder_still_works(monkeypatch):
    monkeypatch.setitem(DATASETS, "fruit", RegisteredReader("fruit", lambda *a, **k: [], lambda cfg: ["apple", "pear"]))
    assert class_names(DataCfg(dataset="fruit", num_classes=2)) == ["apple", "pear"]
    monkeypatch.setitem(DATASETS, "bare", lambda cfg, split, *, train, transform: [])
    bare = get_reader("bare")
    assert isinstance(bare, Reader) and bare.class_names(DataCfg()) is None and not bare.raw_images
    assert class_names(DataCfg(dataset="bare", num_classes=3)) == ["class_0", "class_1", "class_2"]
    with pytest.raises(ConfigError, match="unknown dataset 'nope'; valid names: .*folder"):
        get_reader("nope")


def test_the_checker_asks_the_reader_not_the_name(monkeypatch, tmp_path):
    # A reader that says "folder layout" is scanned as one, whatever its name.
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir()
    (tmp_path / "train" / "images" / "lonely.png").write_bytes(b"")
    monkeypatch.setitem(DATASETS, "tiles", RegisteredReader("tiles", DATASETS["folder"].build, folder_layout=True))
    report = check_dataset(DataCfg(dataset="tiles", root=str(tmp_path), num_classes=2), splits=["train"], workers=0)
    assert "image_without_mask" in {p.kind for p in report.splits[0].problems}
    # A reader that says "no pre-flight" is not read before training.
    monkeypatch.setitem(DATASETS, "generated", RegisteredReader("generated", DATASETS["folder"].build,
                                                                preflight=False))
    assert preflight(DataCfg(dataset="generated", root=str(tmp_path), num_classes=2)) is None


class _Pairs(LabelledDataset):
    size_fix = "fix the size"
    label_fix = "fix the labels"

    def __init__(self, image, mask):
        super().__init__(num_classes=3, ignore_index=255, transform=None, dataset="toy")
        self.image, self.mask = image, mask

    def __len__(self):
        return 1

    def files(self, index):
        return Path("img/0.jpg"), Path("lbl/0.png")

    def sample_name(self, index):
        return "zero"

    def load_raw(self, index):
        return self.image, self.mask


def test_labelled_base_checks_sizes_and_labels_once_naming_file_and_fix():
    image = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(DataError, match=r"^toy: mask 'lbl/0.png' is 5x4 \(WxH\) but image 'img/0.jpg' is 6x4; fix the size"):
        _Pairs(image, np.zeros((4, 5), np.int64)).load(0)
    mask = np.zeros((4, 6), np.int64)
    mask[0, 0], mask[1, 1] = 7, 255
    with pytest.raises(DataError, match=r"^toy: mask 'lbl/0.png' has label\(s\) \[7\] but num_classes is 3 "
                                        r"\(labels 0..2, ignore_index 255\); fix the labels"):
        _Pairs(image, mask).load(0)
    mask[0, 0] = 2
    sample = _Pairs(image, mask)[0]
    assert sample["name"] == "zero" and sample["mask"].shape == (4, 6)
