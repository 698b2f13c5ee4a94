"""Dynamic batching (issue 18, item 6): concurrent requests of similar size share one forward, and
every request gets the answer it would have got alone."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from pixelwise import create_model
from pixelwise.errors import ConfigError
from pixelwise.infer.segmenter import Segmenter
from pixelwise.serve import ServeLimits, create_app
from pixelwise.serve.batching import Batcher
from serve_live import NAMES, image, png, running


class Counting:
    """The model, counting forwards and the images in them."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls, self.images = model, 0, 0
        self.lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls += 1
            self.images += x.shape[0]
        return self.model(x)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("unet", num_classes=3, base_channels=4, depth=2).eval()


def _together(fn, inputs):
    barrier = threading.Barrier(len(inputs))
    out = [None] * len(inputs)

    def one(i):
        barrier.wait()
        out[i] = fn(inputs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


@torch.no_grad()
def test_batcher_groups_similar_sizes_and_crops_each_answer(model):
    counting = Counting(model)
    batcher = Batcher(counting, max_batch=4, max_wait_s=0.2, pad_multiple=model.pad_multiple)
    # this U-Net pads to a multiple of 4: the first four are all 36x40 once padded, the last two 72x52
    assert model.pad_multiple == 4
    sizes = [(33, 38), (34, 37), (36, 40), (35, 39), (70, 50), (69, 49)]
    xs = [torch.randn(1, 3, h, w) for h, w in sizes]
    try:
        outs = _together(batcher, xs)
    finally:
        batcher.close()
    for x, out in zip(xs, outs):
        assert out.shape == (1, 3, *x.shape[-2:])
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    groups = {tuple(-(-s // model.pad_multiple) * model.pad_multiple for s in size) for size in sizes}
    assert len(groups) == 2 and counting.images == len(sizes) and 2 <= counting.calls < len(sizes)
    assert batcher.forwards == counting.calls


def test_a_failed_batch_fails_its_requests_and_the_batcher_goes_on(model):
    state = {"fail": True}

    def flaky(x):
        if state.pop("fail", False):
            raise RuntimeError("out of luck")
        return model(x)

    batcher = Batcher(flaky, max_batch=2, max_wait_s=0.01)
    try:
        with pytest.raises(RuntimeError, match="out of luck"):
            batcher(torch.randn(1, 3, 32, 32))
        assert batcher(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    finally:
        batcher.close()


def test_server_batches_concurrent_requests_with_the_same_answers(model):
    counting = Counting(model)
    seg = Segmenter(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=NAMES)
    plain = Segmenter(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=NAMES)
    seg.model_fn = counting
    limits = ServeLimits(workers=4, max_queue=4, batch_max=4, batch_wait_ms=150)
    app = create_app(seg, limits)
    images = [image(40 + i, 56 - i, seed=i) for i in range(4)]
    with running(app, limits) as (_, port):
        bodies = _together(lambda im: httpx.post(f"http://127.0.0.1:{port}/v1/segment?output=rle",
                                                 content=png(im), timeout=30).json(), images)
    from pycocotools import mask as mask_utils

    for im, body in zip(images, bodies):
        expected = plain(im).labels
        labels = np.zeros(im.shape[:2], np.int64)
        for item in body["rle"]:
            labels[mask_utils.decode({"size": item["size"], "counts": item["counts"].encode()}).astype(bool)] = \
                item["id"]
        assert (labels == expected).mean() > 0.999
    assert app.state.batcher.batched == 4 and app.state.batcher.forwards < 4
    card = TestClient(app).get("/v1/model").json()
    assert card["limits"]["batch_max"] == 4


def test_batching_is_refused_for_instance_models():
    from pixelwise.models.maskrcnn import create_instance_model
    from pixelwise.serve.instance import InstanceSegmenter
    from test_serve_instance import TINY

    seg = InstanceSegmenter(create_instance_model("maskrcnn", **TINY), class_names=["bg", "a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="batch"):
        create_app(seg, ServeLimits(batch_max=4, workers=4))
