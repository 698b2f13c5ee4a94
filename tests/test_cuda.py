"""CUDA paths: autocast (fp16 with loss scaling, bf16) with channels_last, sliding-window
inference, the Segmenter, torch.compile, and DDP over NCCL on one GPU.

Every test skips unless ``torch.cuda.is_available()``, so on a CPU machine this file is all
skips; ``benchmarks/gpu_check.sh`` runs it on a GPU. The reference of each check is the same
network run in fp32 on the CPU (TF32 off on the GPU side, so fp32 there is true fp32).
"""

import csv

import numpy as np
import pytest
import torch

from pixelwise import Segmenter, create_model
from pixelwise.hub import save_model
from pixelwise.infer.sliding import sliding_window

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
MEAN, STD = [0.45, 0.5, 0.55], [0.2, 0.25, 0.3]


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 on the GPU must be fp32 (TF32 convolutions/matmuls round to 10 mantissa bits)."""
    if not CUDA:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tiny_unet(num_classes=3, norm="batch"):
    torch.manual_seed(0)
    return create_model("unet", num_classes=num_classes, base_channels=8, depth=3, norm=norm)


def batch(n=4, size=64, classes=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n, size, size), generator=g)


def grads_of(model):
    return torch.cat([p.grad.detach().float().flatten().cpu() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_unet_train_step_in_autocast_with_channels_last_follows_the_fp32_cpu_step(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    image, target = batch()
    ref = tiny_unet().train()
    ref_loss = torch.nn.functional.cross_entropy(ref(image), target)
    ref_loss.backward()
    ref_grads = grads_of(ref)

    model = tiny_unet().cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = image.cuda().contiguous(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cuda", dtype=dtype):
        logits = model(x)
    assert logits.dtype == dtype and logits.shape == (4, 3, 64, 64)
    loss = torch.nn.functional.cross_entropy(logits.float(), target.cuda())
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # so the gradients compared below are the true ones
    grads = grads_of(model)
    scaler.step(optimizer)
    scaler.update()

    tol = 2e-2 if amp == "fp16" else 5e-2  # 10 vs 7 mantissa bits
    assert loss.item() == pytest.approx(ref_loss.item(), rel=tol)
    assert torch.isfinite(grads).all()
    cosine = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0).item()
    # measured on the CPU with the same network: bf16 0.983, fp16 above 0.99
    assert cosine > (0.99 if amp == "fp16" else 0.95), f"{amp} gradients point elsewhere than fp32's (cosine {cosine:.4f})"
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    assert changed == len(before), "the optimizer step skipped parameters (inf/NaN gradients in the scaler?)"


def test_sliding_window_on_cuda_matches_the_cpu():
    model = tiny_unet().eval()
    x = torch.randn(1, 3, 100, 140, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cpu = sliding_window(model, x, tile=64, overlap=0.5, num_classes=3, activation="softmax")
        gpu_model = model.cuda()
        gpu = sliding_window(gpu_model, x.cuda(), tile=64, overlap=0.5, num_classes=3, activation="softmax")
        on_host = sliding_window(gpu_model, x.cuda(), tile=64, overlap=0.5, num_classes=3, activation="softmax",
                                 out_device="cpu")
    assert gpu.device.type == "cuda" and on_host.device.type == "cpu" and gpu.shape == (1, 3, 100, 140)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(on_host, cpu, atol=1e-4, rtol=1e-4)


@pytest.fixture
def model_dir(tmp_path):
    model = tiny_unet().eval()
    with torch.no_grad():  # centre each class's logit on noise images, so that all three show up in the argmax
        x = (torch.rand(2, 3, 96, 120) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        model.head[1].bias -= model(x).mean((0, 2, 3))
    folder = tmp_path / "model"
    save_model(model, folder, {"data": {"num_classes": 3, "class_names": ["a", "b", "c"], "ignore_index": 255,
                                        "mean": MEAN, "std": STD}})
    return folder


@pytest.mark.parametrize("amp,agree", [("none", 0.9999), ("fp16", 0.99), ("bf16", 0.98)])
def test_segmenter_on_cuda_agrees_with_the_cpu(model_dir, amp, agree):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    image = np.random.default_rng(0).integers(0, 256, (96, 120, 3), dtype=np.uint8)
    cpu = Segmenter.from_pretrained(model_dir)(image, return_probs=True)
    seg = Segmenter.from_pretrained(model_dir, device="cuda", amp=amp, channels_last=True)
    assert next(seg.model.parameters()).device.type == "cuda"
    gpu = seg(image, return_probs=True)
    tiled = seg(image, tile=64, overlap=0.25)
    assert gpu.labels.shape == (96, 120) and tiled.labels.shape == (96, 120)
    assert len(np.unique(cpu.labels)) > 1
    assert (gpu.labels == cpu.labels).mean() >= agree
    np.testing.assert_allclose(gpu.probs, cpu.probs, atol=1e-4 if amp == "none" else 3e-2)


def test_torch_compile_inductor_on_cuda_matches_eager():
    pytest.importorskip("triton", reason="inductor on CUDA needs triton")
    model = tiny_unet().cuda().eval()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-3, rtol=1e-3)


def test_ddp_over_nccl_on_one_gpu_gives_the_plain_gradients(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    image, target = batch()
    image, target = image.cuda(), target.cuda()
    plain = tiny_unet(norm="none").cuda().train()
    torch.nn.functional.cross_entropy(plain(image), target).backward()
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            device_id=torch.device("cuda", torch.cuda.current_device()))
    try:
        ddp = DistributedDataParallel(tiny_unet(norm="none").cuda().train())
        torch.nn.functional.cross_entropy(ddp(image), target).backward()
        torch.cuda.synchronize()
        assert dist.get_backend() == "nccl"
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(grads_of(ddp.module), grads_of(plain), atol=1e-5, rtol=1e-4)


def _train_cfg(out_dir, device, amp):
    from pixelwise import config

    return config.from_dict({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2, "norm": "batch"}},
        "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none", "batch_size": 4,
                 "train_samples": 16, "val_samples": 8},
        "train": {"epochs": 1, "lr": 0.01, "out_dir": str(out_dir), "log_every": 1, "schedule": "constant",
                  "loss": [{"name": "ce"}], "tensorboard": False, "plots": False, "device": device,
                  "amp": amp, "channels_last": device == "cuda"}})


def test_pixelwise_train_on_cuda_in_fp16_follows_the_cpu_run(tmp_path):
    from pixelwise.train import loop as train_mod

    train_mod.train(_train_cfg(tmp_path / "cpu", "cpu", "none"), progress=False)
    train_mod.train(_train_cfg(tmp_path / "cuda", "cuda", "fp16"), progress=False)

    def losses(run):
        with open(run / "log.csv", newline="") as fh:
            return [float(r["loss"]) for r in csv.DictReader(fh)]

    cpu, gpu = losses(tmp_path / "cpu"), losses(tmp_path / "cuda")
    assert len(gpu) == len(cpu) == 4 and np.isfinite(gpu).all()
    assert gpu[0] == pytest.approx(cpu[0], rel=2e-2)  # same weights, same first batch
    assert (tmp_path / "cuda" / "best" / "model.safetensors").exists()
