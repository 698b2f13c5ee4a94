"""The ``pixelwise train|eval|predict`` commands for instance models; ``cli.py`` hands over
here when the config's (or the checkpoint's) model is in ``registry.INSTANCE_MODELS``."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from ..config import ExperimentCfg
from ..data.instances import instance_collate
from ..errors import ConfigError
from ..runtime import resolve_device
from .checkpoint import read_config
from .instance import (
    build_instance_dataset,
    is_instance_model,
    load_instance_model,
    train_instances,
)
from .instance_eval import evaluate_instances, format_scores
from .instance_predict import predict_instance_paths


def is_instance_checkpoint(folder: str | Path) -> bool:
    """Whether the saved model in ``folder`` is an instance model (False when it is no saved model:
    the semantic path then reports what is wrong with it)."""
    try:
        config = read_config(folder)
    except (ConfigError, OSError, ValueError):
        return False
    return is_instance_model(str(config.get("model", {}).get("name")))


def train_command(cfg: ExperimentCfg, *, resume: bool, quiet: bool) -> int:
    """``pixelwise train`` for an instance model: train, then print the best mask AP."""
    state = train_instances(cfg, resume=resume, progress=not quiet)
    out = Path(cfg.train.out_dir)
    print(f"done: {state['step']} steps, best validation mask AP {state['best_mask_ap']:.4f}; "
          f"checkpoints in {out / 'best'} and {out / 'last'}")
    return 0


def eval_command(cfg: ExperimentCfg, *, checkpoint: str | None, split: str | None, quiet: bool) -> int:
    """``pixelwise eval`` for an instance model: COCO box and mask AP on ``split``."""
    device = resolve_device(cfg.train.device)
    model, config = load_instance_model(checkpoint or Path(cfg.train.out_dir) / "best", device=device)
    dataset = build_instance_dataset(cfg, split or cfg.data.val_split, train=False)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                        collate_fn=instance_collate)
    names = config.get("data", {}).get("class_names") or [f"class_{i}" for i in range(cfg.data.num_classes)]
    scores = evaluate_instances(model, loader, class_names=names, device=device, amp=cfg.train.amp,
                                progress=not quiet)
    print(format_scores(scores))
    return 0


def predict_command(checkpoint: str, inputs: list[str], out: str, *, device: str, amp: str, quiet: bool) -> int:
    """``pixelwise predict`` for an instance model: overlays, semantic PNGs and COCO-RLE JSON."""
    result = predict_instance_paths(checkpoint, inputs, out, device=device, amp=amp, progress=not quiet)
    print(f"wrote {len(result['written'])} prediction(s) with {result['detections']} detection(s) to {out} "
          f"(COCO results: {result['predictions']})"
          + (f"; skipped {len(result['failed'])} unreadable file(s)" if result["failed"] else ""))
    return 1 if result["failed"] and not result["written"] else 0
