"""The loop: retrain in a `pixelwise train` subprocess, swap when better on held-out images, predict the
rest, rank by uncertainty; and the uncertainty measures against an independent computation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.stats import entropy

from annotate_helpers import CLASSES, make_folder
from pixelwise.annotate import create_app, open_project
from pixelwise.annotate.retrain import holdout_miou, holdout_split
from pixelwise.annotate.uncertainty import image_uncertainty, pixel_uncertainty, rank_by_uncertainty
from pixelwise.data import read_mask

TINY = {"name": "unet", "args": {"base_channels": 4, "depth": 2}}


def _wait(client, job: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/annotate/{job}").json()
        if status["state"] != "running":
            return status
        time.sleep(0.2)
    raise TimeoutError(f"{job} still running after {timeout} s: {status}")


def test_retrain_swap_predict_rest_and_rank(tmp_path):
    truth = make_folder(tmp_path / "data", count=8, size=48, seed=4)
    store, slot, sam = open_project(tmp_path / "data", classes=CLASSES)
    client = TestClient(create_app(store, slot=slot, sam=sam))
    labelled = [f"img{i}" for i in range(6)]
    for name in labelled:
        store.save_mask(name, truth[name])

    started = client.post("/v1/annotate/retrain", json={"steps": 12, "batch_size": 2, "model": TINY})
    assert started.status_code == 202 and started.json()["state"] == "running"
    assert client.post("/v1/annotate/retrain", json={"steps": 1}).status_code == 409  # one at a time
    first = _wait(client, "retrain")
    assert first["state"] == "done", first
    train, held = holdout_split(labelled)
    assert first["holdout"] == held and first["train_images"] == len(train) and first["holdout_images"] == len(held)
    assert first["swapped"] and first["old_miou"] is None and first["step"] == 12
    run = tmp_path / "data" / ".pixelwise-annotate" / "retrain" / "round-001"
    assert sorted(p.stem for p in (run / "data" / "train" / "masks").iterdir()) == sorted(train)
    project = client.get("/v1/annotate/project").json()
    assert project["model"]["source"] == first["model"] and "model" in project["methods"]
    assert first["new_miou"] == pytest.approx(holdout_miou(slot.get(), store, held))

    # Predict the rest: proposals for the two unlabelled images, uncertainties, and the ranking.
    assert client.post("/v1/annotate/predict").status_code == 202
    predicted = _wait(client, "predict")
    assert predicted["state"] == "done" and predicted["predicted"] == 2
    listing = {i["name"]: i for i in client.get("/v1/annotate/images").json()["images"]}
    for name in ("img6", "img7"):
        labels, probs = slot.get().predict(store.image(name), name)
        assert (read_mask(store.proposal_path(name)) == labels).all()
        assert listing[name]["uncertainty"]["entropy"] == pytest.approx(image_uncertainty(probs)["entropy"])
        any_mask = client.get(f"/v1/annotate/images/{name}/mask?source=any&format=raw")
        assert any_mask.headers["x-mask-source"] == "proposal"
    most = max(("img6", "img7"), key=lambda n: listing[n]["uncertainty"]["entropy"])
    useful = client.get("/v1/annotate/next?strategy=uncertainty").json()
    assert useful["name"] == most and useful["strategy"] == "uncertainty"
    assert not listing["img0"]["proposal"]  # labelled images are not predicted

    # A second, one-step round: swapped exactly when it beats the current model on the held-out images.
    current = slot.get()
    old = holdout_miou(current, store, held)
    client.post("/v1/annotate/retrain", json={"steps": 1, "batch_size": 2, "model": TINY})
    second = _wait(client, "retrain")
    assert second["state"] == "done" and second["round"] == 2
    assert second["old_miou"] == pytest.approx(old)
    assert second["swapped"] == (second["new_miou"] > second["old_miou"])
    assert (slot.get() is current) == (not second["swapped"])

    # A restarted server without --model proposes with the model the last swap chose.
    _, slot2, _ = open_project(tmp_path / "data")
    assert slot2.get().source == slot.get().source


def test_retrain_reports_a_failing_trainer_and_bad_options(tmp_path):
    truth = make_folder(tmp_path / "data", count=3, size=48, seed=4)
    store, slot, _ = open_project(tmp_path / "data", classes=CLASSES)
    client = TestClient(create_app(store, slot=slot))
    for name in ("img0", "img1"):
        store.save_mask(name, truth[name])
    refused = client.post("/v1/annotate/retrain", json={"steps": 2, "colour": "blue"})
    assert refused.status_code == 422 and "colour" in refused.json()["error"]["message"]
    assert client.post("/v1/annotate/retrain", json={"steps": 0}).status_code == 422
    client.post("/v1/annotate/retrain", json={"steps": 2, "model": {"name": "no-such-net"}})
    status = _wait(client, "retrain")
    assert status["state"] == "failed" and "no-such-net" in status["error"] and "train.log" in status["error"]
    assert slot.get() is None


def test_holdout_split_is_stable_and_never_empty():
    names = [f"im{i:03d}" for i in range(50)]
    train, held = holdout_split(names)
    assert len(held) == 10 and not set(train) & set(held) and sorted(train + held) == sorted(names)
    assert set(holdout_split(list(reversed(names)))[1]) == set(held)  # the order given does not matter
    more_train, more_held = holdout_split(names + [f"new{i}" for i in range(5)])
    assert len(set(held) & set(more_held)) >= 8  # growing the set keeps most held-out images held out
    assert holdout_split(["a", "b"])[1] and holdout_split(["a", "b"])[0]
    with pytest.raises(ValueError, match="at least 2"):
        holdout_split(["a"])


def test_uncertainty_measures_against_scipy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, 7))
    probs = np.exp(logits) / np.exp(logits).sum(0)
    assert np.allclose(pixel_uncertainty(probs, "entropy"), entropy(probs, axis=0) / np.log(4), atol=1e-6)
    top = np.sort(probs, axis=0)
    assert np.allclose(pixel_uncertainty(probs, "margin"), 1 - (top[-1] - top[-2]), atol=1e-6)
    certain = np.zeros((3, 2, 2))
    certain[1] = 1
    assert image_uncertainty(certain) == {"entropy": 0.0, "margin": 0.0}
    assert image_uncertainty(np.full((3, 2, 2), 1 / 3)) == pytest.approx({"entropy": 1.0, "margin": 1.0})
    scores = {"a": {"entropy": 0.2, "margin": 0.9}, "b": {"entropy": 0.7, "margin": 0.1}, "c": {"entropy": 0.7}}
    assert rank_by_uncertainty(scores, ["a", "b", "c", "d"]) == ["b", "c", "a"]
    assert rank_by_uncertainty(scores, ["a", "b", "c"], measure="margin") == ["a", "b"]
