"""One error shape, unknown options, a truthful /healthz, the Host check and the bearer token
(issue 18, item 5)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from pixelwise import create_model
from pixelwise.errors import ConfigError
from pixelwise.infer.segmenter import Segmenter
from pixelwise.serve import ServeLimits, create_app
from pixelwise.serve.access import check_bind, is_loopback
from serve_live import NAMES, image, png, running, tiny_model_dir


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return Segmenter(create_model("unet", num_classes=3, base_channels=4, depth=2), mean=[0.5] * 3,
                     std=[0.25] * 3, class_names=NAMES)


@pytest.fixture(scope="module")
def client(segmenter):
    return TestClient(create_app(segmenter, ServeLimits(max_bytes=200_000)))


def _error(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nope", 404, "not_found"),
    ("POST", "/v1/unknown?x=1", 404, "not_found"),
    ("GET", "/v1/segment", 405, "method_not_allowed"),
    ("DELETE", "/v1/model", 405, "method_not_allowed"),
    ("POST", "/v1/segment?tile=abc", 422, "invalid_parameter"),
    ("POST", "/v1/segment?output=svg", 422, "invalid_parameter"),
])
def test_framework_errors_have_the_documented_shape(client, method, path, status, code):
    resp = client.request(method, path, content=png(image()))
    assert resp.status_code == status
    assert _error(resp)["code"] == code
    assert "detail" not in resp.json()


def test_unknown_option_is_a_422_naming_it(client):
    resp = client.post("/v1/segment?ttaa=flip", content=png(image()))
    assert resp.status_code == 422
    error = _error(resp)
    assert error["code"] == "unknown_option" and "'ttaa'" in error["message"] and "did you mean 'tta'" in error["message"]
    # named even next to a bad value of a known option, and several at once
    resp = client.post("/v1/segment?tile=5&colour=red&tilee=64", content=png(image()))
    error = _error(resp)
    assert resp.status_code == 422 and "'colour'" in error["message"] and "'tilee'" in error["message"]


def test_internal_errors_are_json_too(segmenter):
    def broken(x):
        if x.shape[-1] == 56:  # the probe sizes pass; the request's image does not
            raise RuntimeError("boom")
        return segmenter.model(x)

    seg = Segmenter(segmenter.model, mean=[0.5] * 3, std=[0.25] * 3, class_names=NAMES, model_fn=broken)
    resp = TestClient(create_app(seg), raise_server_exceptions=False).post("/v1/segment", content=png(image()))
    assert resp.status_code == 500 and _error(resp)["code"] == "internal_error"


def test_healthz_counts_a_busy_worker_truthfully(segmenter):
    """While the only worker runs a job, even one whose request already got its 504, /healthz says busy."""
    gate_open = threading.Event()
    hold = threading.Event()

    def slow(x):
        if hold.is_set():
            gate_open.wait(20)
        return segmenter.model(x)

    seg = Segmenter(segmenter.model, mean=[0.5] * 3, std=[0.25] * 3, class_names=NAMES, model_fn=slow)
    limits = ServeLimits(workers=1, max_queue=1, timeout_s=0.5)
    with running(create_app(seg, limits), limits) as (_, port):
        base = f"http://127.0.0.1:{port}"
        hold.set()
        try:
            resp = httpx.post(f"{base}/v1/segment", content=png(image()), timeout=10)
            assert resp.status_code == 504
            health = httpx.get(f"{base}/healthz").json()
            assert health["busy"] == 1 and health["workers"] == 1 and health["pending"] >= 1
            # its place is still held: with one queue place left, one more request is admitted at most
            assert health["queued"] == 0 and health["capacity"] == 2
        finally:
            gate_open.set()
            hold.clear()
        end = time.monotonic() + 10
        while httpx.get(f"{base}/healthz").json()["busy"] and time.monotonic() < end:
            time.sleep(0.05)
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "model": "unet", "workers": 1, "busy": 0,
                                                        "queued": 0, "pending": 0, "capacity": 2}


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8000", True), ("localhost", True), ("LOCALHOST:1", True), ("app.localhost:80", True),
    ("[::1]:8000", True), ("127.1.2.3", True),
    ("evil.example", False), ("evil.example:8000", False), ("127.0.0.1.evil.example", False), ("10.0.0.5", False),
])
def test_local_bind_answers_local_host_names_only(segmenter, host, ok):
    client = TestClient(create_app(segmenter, host="127.0.0.1"))
    for path in ("/v1/model", "/healthz", "/nope"):
        resp = client.get(path, headers={"Host": host})
        if ok:
            assert resp.status_code in (200, 404)
        else:
            assert resp.status_code == 403 and _error(resp)["code"] == "forbidden_host"
            assert "DNS rebinding" in resp.json()["error"]["message"]


def test_no_host_check_on_a_public_bind(segmenter):
    client = TestClient(create_app(segmenter, host="0.0.0.0", token="t"))
    assert client.get("/healthz", headers={"Host": "my-server.example:8000"}).status_code == 200


def test_bearer_token(segmenter):
    client = TestClient(create_app(segmenter, host="127.0.0.1", token="s3cret"), base_url="http://127.0.0.1")
    missing = client.get("/v1/model")
    assert missing.status_code == 401 and _error(missing)["code"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/model", headers={"Authorization": "Basic s3cret"}).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/model", headers=good).status_code == 200
    assert client.post("/v1/segment", content=png(image())).status_code == 401
    assert client.post("/v1/segment", content=png(image()), headers=good).status_code == 200
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200  # open


def test_public_bind_needs_a_token(tmp_path, monkeypatch, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(ConfigError, match="PIXELWISE_TOKEN"):
        check_bind("0.0.0.0", None)

    import uvicorn

    from pixelwise.cli import main

    folder = tiny_model_dir(tmp_path / "model")
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    monkeypatch.delenv("PIXELWISE_TOKEN", raising=False)
    assert main(["serve", str(folder), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err and not started
    monkeypatch.setenv("PIXELWISE_TOKEN", "from-env")
    assert main(["serve", str(folder), "--host", "0.0.0.0"]) == 0
    client = TestClient(started["app"])
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/model", headers={"Authorization": "Bearer from-env"}).status_code == 200
    assert "from-env" not in capsys.readouterr().out  # the token is not printed


def test_gate_refuses_beyond_capacity_and_gives_places_back():
    from pixelwise.serve.app import Gate

    async def scenario():
        gate = Gate(workers=1, max_queue=0)
        ticket = gate.admit()
        with pytest.raises(Exception) as info:
            gate.admit()
        ticket.release()
        assert info.value.status == 503 and gate.held == 0
    asyncio.run(scenario())


def test_model_card_shows_no_server_paths(segmenter, tmp_path):
    from pixelwise.serve.app import model_card

    secret = str(tmp_path / "private" / "r18_local.pth")
    original = segmenter.model.config
    segmenter.model.config = {**original, "encoder_weights": secret,
                              "notes": [{"data_root": str(tmp_path / "data")}], "plain": "imagenet"}
    try:
        card = model_card(segmenter, ServeLimits())
        served = TestClient(create_app(segmenter, ServeLimits())).get("/v1/model").json()
    finally:
        segmenter.model.config = original  # the fixture is shared by the module
    text = str(card)
    assert str(tmp_path) not in text
    assert card["architecture"]["encoder_weights"] == "r18_local.pth"  # the file's name is still told
    assert card["architecture"]["notes"] == [{"data_root": "data"}] and card["architecture"]["plain"] == "imagenet"
    assert served["architecture"] == card["architecture"]
