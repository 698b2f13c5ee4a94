"""Command line: ``pixelwise train|eval|predict|models|demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PixelwiseError


def _cmd_train(args: argparse.Namespace) -> int:
    from . import config
    from .engine.train import train

    cfg = config.load(args.config, args.set)
    state = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"done: {state['step']} steps, best validation mIoU {state['best_miou']:.4f}; "
          f"checkpoints in {Path(cfg.train.out_dir) / 'best'} and {Path(cfg.train.out_dir) / 'last'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import functools

    from torch.utils.data import DataLoader

    from . import config
    from .data import build_dataset, class_names, pad_collate
    from .engine.checkpoint import load_model
    from .engine.evaluate import evaluate
    from .engine.train import resolve_device

    cfg = config.load(args.config, args.set)
    device = resolve_device(cfg.train.device)
    model, _ = load_model(args.checkpoint or Path(cfg.train.out_dir) / "best", device=device)
    ds = build_dataset(cfg.data, args.split or cfg.data.val_split, train=False)
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                        collate_fn=functools.partial(pad_collate, ignore_index=cfg.data.ignore_index))
    cm = evaluate(model, loader, num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index,
                  device=device, amp=cfg.train.amp, progress=not args.quiet)
    print(cm.format_table(class_names(cfg.data)))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .engine.infer import predict_paths

    result = predict_paths(args.checkpoint, args.inputs, args.out, device=args.device, amp=args.amp,
                           progress=not args.quiet)
    print(f"wrote {len(result['written'])} prediction(s) to {args.out}"
          + (f"; skipped {len(result['failed'])} unreadable file(s)" if result["failed"] else ""))
    return 1 if result["failed"] and not result["written"] else 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .encoders import list_encoders
    from .models import list_models
    from .models.catalog import CATALOG
    from .models.stats import canonical_stats

    for name in list_models():
        info = CATALOG.get(name, {})
        line = f"{name:16s} {info.get('paper', '')}"
        if args.params or args.flops:
            stats = canonical_stats(name, flops=args.flops)
            shown = ", ".join(f"{k}={v}" for k, v in stats["config"].items())
            line += f"\n{'':16s} {stats['params']:,} parameters ({stats['params'] / 1e6:.2f} M) with {shown}"
            if args.flops:
                line += f"\n{'':16s} {stats['gflops']:.1f} GFLOPs on {stats['input']}"
        line += f"\n{'':16s} encoders: {info.get('encoders', '')}"
        print(line)
    if args.encoders:
        for source, names in list_encoders().items():
            shown = names if source != "timm" else names[:30] + [f"... ({len(names)} timm models)"]
            print(f"\n{source} encoders:\n  " + ", ".join(shown))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .engine.demo import run_demo

    result = run_demo(args.out, progress=not args.quiet)
    print(result["table"])
    print(f"\nfinal validation mIoU: {result['scores']['miou']:.4f}")
    print(f"report: {Path(result['report']).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelwise", description="Image segmentation in plain PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=0.01")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last")
    common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation split")
    p.add_argument("config")
    p.add_argument("--checkpoint", help="model folder (default: OUT_DIR/best)")
    p.add_argument("--split", help="split to evaluate (default: data.val_split)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    common(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="segment images with a saved model")
    p.add_argument("checkpoint", help="model folder (config.json + model.safetensors)")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    common(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("models", help="list architectures (and encoders)")
    p.add_argument("--params", action="store_true", help="build each canonical model and count parameters")
    p.add_argument("--flops", action="store_true", help="also count FLOPs at 512x512 (slow: minutes on a CPU)")
    p.add_argument("--encoders", action="store_true", help="also list encoder names")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="train, evaluate and report on the built-in synthetic dataset")
    p.add_argument("--out", default="runs/demo")
    common(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PixelwiseError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last completed checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
