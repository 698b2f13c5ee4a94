"""Hub model sources (pixelwise.remote): ``hf://`` folders read from a local huggingface_hub cache
with the network blocked, offline errors, pushes (to a recording stand-in for the Hub API), and
``pixelwise convert hf://...``. The cache is a folder laid out as huggingface_hub lays it out
(``models--ORG--NAME/refs/BRANCH`` holding a commit hash, ``snapshots/HASH/FILES``); nothing here
reaches the network."""

import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise import Segmenter, create_model, remote
from pixelwise.cli import main
from pixelwise.errors import ConfigError, MissingDependencyError

pytest.importorskip("huggingface_hub", reason="huggingface_hub (the hub extra) reads the cache")

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, no_network):
    """An empty Hub cache named by HF_HUB_CACHE, and every socket connection refused."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("PIXELWISE_HUB_REFRESH", raising=False)
    return SimpleNamespace(path=cache, attempts=no_network)


def put_in_cache(cache, repo_id, folder, *, sha=SHA, subfolder="", branch="main"):
    """Place ``folder``'s files in ``cache`` as huggingface_hub's download of ``repo_id`` at ``sha`` would."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha / subfolder
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    if branch:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / branch).write_text(sha)
    return snapshot


def _segmenter(seed=0):
    torch.manual_seed(seed)
    model = create_model("unet", num_classes=3, base_channels=4, depth=2)
    return Segmenter(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=["bg", "cell", "edge"])


def _image():
    return np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)


def test_parse_sources():
    assert remote.parse("hf://org/name") == remote.HubSource("org/name", "", None)
    assert remote.parse("hf://org/name/runs/best@v1.2") == remote.HubSource("org/name", "runs/best", "v1.2")
    assert str(remote.parse("hf://org/name/sub@abc")) == "hf://org/name/sub@abc"
    assert remote.is_remote("hf://a/b") and not remote.is_remote("runs/demo/best") and not remote.is_remote(3)
    for bad in ("hf://justone", "hf://org/name@", "hf://org/../etc", "hf://"):
        with pytest.raises(ConfigError, match="hf://ORG/NAME"):
            remote.parse(bad)


def test_from_pretrained_reads_the_cache_with_the_network_blocked(hub_cache, tmp_path, monkeypatch):
    seg = _segmenter()
    seg.save_pretrained(tmp_path / "local")
    put_in_cache(hub_cache.path, "lab/cells", tmp_path / "local")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = Segmenter.from_pretrained("hf://lab/cells")
    image = _image()
    assert np.array_equal(loaded(image).labels, seg(image).labels)
    assert np.array_equal(loaded(image).probs, seg(image).probs)
    assert loaded.class_names == ["bg", "cell", "edge"]
    assert hub_cache.attempts == []


def test_cached_source_needs_no_offline_flag_and_pins_revisions_and_folders(hub_cache, tmp_path):
    """A cached source is read without any request even when the network is allowed; a revision
    (commit) and a folder inside the repository select what they name."""
    first, second = _segmenter(0), _segmenter(1)
    first.save_pretrained(tmp_path / "a")
    second.save_pretrained(tmp_path / "b")
    put_in_cache(hub_cache.path, "lab/cells", tmp_path / "a", sha=SHA)
    put_in_cache(hub_cache.path, "lab/cells", tmp_path / "b", sha=SHA2, subfolder="runs/best", branch=None)
    image = _image()
    assert np.array_equal(Segmenter.from_pretrained("hf://lab/cells")(image).probs, first(image).probs)
    pinned = Segmenter.from_pretrained(f"hf://lab/cells/runs/best@{SHA2}")
    assert np.array_equal(pinned(image).probs, second(image).probs)
    assert hub_cache.attempts == []


def test_offline_cache_miss_says_how_to_fill_the_cache(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"not in the local Hub cache.*HF_HUB_OFFLINE.*hf download lab/none"):
        Segmenter.from_pretrained("hf://lab/none")
    assert hub_cache.attempts == []


def test_unreachable_hub_is_a_clear_error(hub_cache):
    with pytest.raises(ConfigError, match=r"hf://lab/none"):
        Segmenter.from_pretrained("hf://lab/none")


def test_a_repository_without_a_pixelwise_folder_points_to_convert(hub_cache, tmp_path, monkeypatch):
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "config.json").write_text(json.dumps({"architectures": ["SegformerForSemanticSegmentation"]}))
    put_in_cache(hub_cache.path, "nvidia/segformer", peer)
    monkeypatch.setattr(remote, "offline", lambda: False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: str(
        hub_cache.path / "models--nvidia--segformer" / "snapshots" / SHA))
    with pytest.raises(ConfigError, match=r"no model.safetensors.*pixelwise convert hf://nvidia/segformer"):
        Segmenter.from_pretrained("hf://nvidia/segformer")


def test_missing_huggingface_hub_names_the_extra(hub_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MissingDependencyError, match=r"pixelwise\[hub\]"):
        Segmenter.from_pretrained("hf://lab/cells")


class RecordingHub:
    """Stands in for huggingface_hub.HfApi: records the calls and keeps what was uploaded."""

    calls: list = []
    uploaded: dict = {}

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        RecordingHub.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns, **kwargs):
        RecordingHub.calls.append(("upload_folder", repo_id, kwargs))
        from pathlib import Path

        RecordingHub.uploaded = {p: (Path(folder_path) / p).read_bytes() for p in allow_patterns}
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{SHA}"})()


def test_push_then_load_round_trip(hub_cache, tmp_path, monkeypatch):
    import huggingface_hub

    RecordingHub.calls, RecordingHub.uploaded = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    seg = _segmenter()
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "notes.txt").write_text("not part of the model")
    seg.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="lab/cells", private=True)
    assert RecordingHub.calls[0] == ("create_repo", "lab/cells", {"private": True, "exist_ok": True,
                                                                 "repo_type": "model"})
    assert sorted(RecordingHub.uploaded) == ["README.md", "config.json", "model.safetensors"]
    card = RecordingHub.uploaded["README.md"].decode()
    assert card.startswith("---\nlibrary_name: pixelwise\npipeline_tag: image-segmentation\n")
    # What was uploaded is what a download brings back: it loads and predicts the same.
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for name, data in RecordingHub.uploaded.items():
        (pulled / name).write_bytes(data)
    put_in_cache(hub_cache.path, "lab/cells", pulled)
    image = _image()
    assert np.array_equal(Segmenter.from_pretrained("hf://lab/cells")(image).probs, seg(image).probs)
    with pytest.raises(ConfigError, match="repo_id"):
        seg.save_pretrained(tmp_path / "x", push_to_hub=True)


def test_cli_push_and_predict_from_the_hub(hub_cache, tmp_path, monkeypatch):
    import huggingface_hub

    RecordingHub.calls, RecordingHub.uploaded = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    _segmenter().save_pretrained(tmp_path / "local")
    assert main(["push", str(tmp_path / "local"), "lab/cells", "--message", "first"]) == 0
    assert RecordingHub.calls[-1][2]["commit_message"] == "first"
    assert main(["push", str(tmp_path / "nothing"), "lab/cells"]) == 2
    put_in_cache(hub_cache.path, "lab/cells", tmp_path / "local")
    Image.fromarray(_image()).save(tmp_path / "a.png")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["predict", "hf://lab/cells", str(tmp_path / "a.png"), "--out", str(tmp_path / "pred"),
                 "--quiet"]) == 0
    assert (tmp_path / "pred" / "a.png").is_file()
    assert main(["export", "hf://lab/cells"]) == 2  # the default output would be inside the cache
    assert main(["predict", "hf://lab/absent", str(tmp_path / "a.png"), "--out", str(tmp_path / "p2")]) == 2
    assert hub_cache.attempts == []


def test_convert_a_transformers_repository_from_the_cache(hub_cache, tmp_path, monkeypatch):
    T = pytest.importorskip("transformers", reason="transformers (the dev extra) builds the reference model")
    from convert_helpers import max_diff, randomise

    cfg = T.SegformerConfig(num_labels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                            num_attention_heads=[1, 1, 1, 2], decoder_hidden_size=16)
    ref = randomise(T.SegformerForSemanticSegmentation(cfg)).eval()
    ref.save_pretrained(tmp_path / "peer")
    put_in_cache(hub_cache.path, "nvidia/tiny-segformer", tmp_path / "peer")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["convert", "hf://nvidia/tiny-segformer", "--from", "hf", "--out", str(tmp_path / "m")]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["converted_from"] == {"source": "hf", "path": "hf://nvidia/tiny-segformer"}
    from pixelwise.hub import load_model

    ours, _ = load_model(tmp_path / "m")
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        diff, scale = max_diff(ref(pixel_values=x).logits, ours(x), (64, 80))
    assert scale > 0.1 and diff < 1e-4
    with pytest.raises(ConfigError, match="FILE.pth"):
        from pixelwise.convert import convert

        convert("hf://org/weights", source="torchvision", out=tmp_path / "tv")
