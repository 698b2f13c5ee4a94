"""``pixelwise train|eval|check|models|demo|annotate|separate``: the verbs that read a config or a folder of data."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import PixelwiseError


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from ..data.check import preflight, preflight_summary
    from ..runtime import resolve_device
    from ..tasks.select import build_task
    from ..train.loop import train
    from ..train.run_dir import load_run_config

    cfg = load_run_config(args.config, args.set, resume=args.resume)
    task = build_task(cfg)
    semantic = task.name == "semantic" and not cfg.data.multilabel and cfg.data.num_classes > 1
    if semantic and not args.no_preflight and not args.resume and os.environ.get("RANK", "0") == "0":
        tic = time.perf_counter()
        report = preflight(cfg)
        if report is not None and not args.quiet:
            print(preflight_summary(report, time.perf_counter() - tic))
    state = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # torchrun: one summary line per job, from rank 0
        return 0
    key = task.best_key  # best_miou, best_mask_ap
    shown = {"best_miou": "mIoU", "best_mask_ap": "mask AP"}.get(key, key[5:])
    print(f"done: {state['step']} steps, best validation {shown} {100 * state[key]:.2f}%; "
          f"checkpoints in {Path(cfg.train.out_dir) / 'best'} and {Path(cfg.train.out_dir) / 'last'}")
    if semantic and cfg.data.dataset != "volume" and not args.no_report:  # the report shows 2D images
        from ..train.run_report import write_run_report

        report = write_run_report(cfg.train.out_dir, cfg, device=str(resolve_device(cfg.train.device)),
                                  progress=not args.quiet)
        print(f"report: {report['report']} (scores, per-class table, curves, confusion matrix, predictions)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from .. import config
    from ..hub import load_model
    from ..runtime import resolve_device
    from ..tasks.instance import format_scores
    from ..tasks.select import build_task

    cfg = config.load(args.config, args.set)
    task = build_task(cfg)
    device = resolve_device(cfg.train.device)
    model, _ = load_model(args.checkpoint or Path(cfg.train.out_dir) / "best", device=device)
    dataset = task.dataset(args.split or cfg.data.val_split, train=False)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                        collate_fn=task.collate)
    result = task.evaluate(model, loader, device=device, amp=cfg.train.amp, channels_last=False,
                           progress=not args.quiet)
    if result.confusion is not None:
        print(result.confusion.format_table(task.class_names()))
    elif task.name == "instance":
        print(format_scores(result.details))
    else:
        names = task.class_names()
        print("\n".join(f"{name:20s} IoU {100 * iou:6.2f}  Dice {100 * dice:6.2f}"
                        for name, iou, dice in zip(names, result.details["iou"], result.details["dice"])))
        print(f"mIoU {100 * result.details['miou']:.2f}  mean Dice {100 * result.details['mean_dice']:.2f}")
    if args.report is not None:
        if result.confusion is None:
            raise PixelwiseError(f"--report is written for semantic (multiclass) models; {task.name} models print "
                                 f"their scores above")
        from ..train.run_report import write_run_report

        where = args.report or cfg.train.out_dir
        report = write_run_report(where, cfg, model_dir=args.checkpoint or Path(cfg.train.out_dir) / "best",
                                  split=args.split, device=str(device), progress=not args.quiet)
        print(f"report: {report['report']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..encoders import list_encoders
    from ..models import list_models
    from ..models.catalog import CATALOG
    from ..models.stats import canonical_stats

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


def cmd_annotate(args: argparse.Namespace) -> int:
    from ..annotate import annotate

    annotate(args.data_dir, model=args.model, classes=args.classes, sam=args.sam, host=args.host, port=args.port,
             device=args.device)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, progress=not args.quiet)
    print(result["table"])
    print(f"\nfinal validation mIoU: {result['scores']['miou']:.4f} ({100 * result['scores']['miou']:.2f}%)")
    print(f"report: {Path(result['report']).resolve()}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .. import config
    from ..data import class_names
    from ..data.check import check_dataset

    cfg = config.load(args.config, args.set)
    report = check_dataset(cfg, args.split or None, workers=args.workers)
    try:
        names = class_names(cfg.data)
    except PixelwiseError:
        names = None  # a wrong class_names list must not hide the data problems
    print(report.format(names))
    path = report.write_json(args.json or Path(cfg.train.out_dir) / "check.json", names)
    print(f"JSON report: {path}")
    return 0 if report.ok else 1


def cmd_separate(args: argparse.Namespace) -> int:
    from ..recipes.audio import separate

    source, residual = separate(args.checkpoint, args.input, args.out, device=args.device)
    print(f"wrote {source} and {residual}")
    return 0


def cmd_pq(args: argparse.Namespace) -> int:
    """``pixelwise pq``: panoptic quality of COCO-format panoptic predictions against ground truth."""
    import json

    from ..metrics.panoptic import evaluate_panoptic_files

    result = evaluate_panoptic_files(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir)
    print(f"{'':12s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'classes':>8s}")
    for group in ("all", "things", "stuff"):
        r = result[group]
        print(f"{group:12s} {100 * r['pq']:6.2f} {100 * r['sq']:6.2f} {100 * r['rq']:6.2f} {r['n']:8d}")
    if args.per_class:
        for c, r in result["per_class"].items():
            if r["tp"] + r["fp"] + r["fn"]:
                print(f"  {r['name'][:20]:20s} PQ {100 * r['pq']:6.2f}  SQ {100 * r['sq']:6.2f}  "
                      f"RQ {100 * r['rq']:6.2f}  TP {r['tp']} FP {r['fp']} FN {r['fn']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"JSON: {args.json}")
    return 0
