"""Command line: ``pixelwise train|eval|predict|check|serve|annotate|export|convert|push|models|demo``.

Every verb that takes a model folder also takes a Hub source ``hf://ORG/NAME[/FOLDER][@REVISION]``
(:mod:`pixelwise.remote`: the local cache first, the Hub only for what it lacks)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import PixelwiseError

FORMAT_DEFAULT = "png,color,overlay"
BACKEND_CHOICES = ["torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8"]


def _instance_predict(checkpoint: str, inputs: list[str], out: str, *, device: str, amp: str, quiet: bool) -> int:
    """``pixelwise predict`` for an instance model: overlays, semantic PNGs and COCO-RLE JSON."""
    from .infer.instance import predict_instance_paths

    result = predict_instance_paths(checkpoint, inputs, out, device=device, amp=amp, progress=not quiet)
    print(f"wrote {len(result['written'])} prediction(s) with {result['detections']} detection(s) to {out} "
          f"(COCO results: {result['predictions']})"
          + (f"; skipped {len(result['failed'])} unreadable file(s)" if result["failed"] else ""))
    return 1 if result["failed"] and not result["written"] else 0


def _cmd_train(args: argparse.Namespace) -> int:
    import time

    from .data.check import preflight, preflight_summary
    from .runtime import resolve_device
    from .tasks.select import build_task
    from .train.loop import train
    from .train.run_dir import load_run_config

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
        from .train.run_report import write_run_report

        report = write_run_report(cfg.train.out_dir, cfg, device=str(resolve_device(cfg.train.device)),
                                  progress=not args.quiet)
        print(f"report: {report['report']} (scores, per-class table, curves, confusion matrix, predictions)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from . import config
    from .hub import load_model
    from .runtime import resolve_device
    from .tasks.instance import format_scores
    from .tasks.select import build_task

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
        from .train.run_report import write_run_report

        where = args.report or cfg.train.out_dir
        report = write_run_report(where, cfg, model_dir=args.checkpoint or Path(cfg.train.out_dir) / "best",
                                  split=args.split, device=str(device), progress=not args.quiet)
        print(f"report: {report['report']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .hub import is_instance_folder
    from .infer.predict import predict_paths

    if is_instance_folder(args.checkpoint):  # overlays + COCO-RLE JSON; tiling/TTA options do not apply
        semantic_only = [flag for flag, used in (("--tile", args.tile is not None), ("--tta", args.tta != "none"),
                                                 ("--scales", args.scales is not None), ("--crf", args.crf),
                                                 ("--format", args.format != FORMAT_DEFAULT),
                                                 ("--backend", args.backend != "torch"),
                                                 ("--channels-last", args.channels_last)) if used]
        if semantic_only:
            raise ConfigError(f"{args.checkpoint!r} holds an instance model; {', '.join(semantic_only)} appl"
                              f"{'ies' if len(semantic_only) == 1 else 'y'} to semantic models only. An instance "
                              f"model writes NAME_instances.png, NAME_semantic.png and COCO-RLE predictions.json; "
                              f"it takes --device, --amp and --out")
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise ConfigError(f"{args.checkpoint!r} holds an instance model, whose prediction runs in one process "
                              f"(it is not sharded over torchrun ranks yet); run pixelwise predict without torchrun")
        return _instance_predict(args.checkpoint, args.inputs, args.out, device=args.device, amp=args.amp,
                               quiet=args.quiet)
    tta: str | dict = args.tta
    if args.scales is not None:
        try:
            scales = [float(s) for s in args.scales.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--scales {args.scales!r} must be comma-separated numbers, e.g. 0.75,1,1.25") from None
        if args.tta == "none":
            raise ConfigError("--scales needs --tta flip+scales (or --tta scales)")
        tta = {"flips": ["h"] if args.tta.startswith("flip") else [], "scales": scales}
    elif args.tta == "scales":
        tta = {"flips": [], "scales": [0.75, 1.0, 1.25]}
    result = predict_paths(args.checkpoint, args.inputs, args.out, device=args.device, amp=args.amp,
                           channels_last=args.channels_last, tile=args.tile, overlap=args.overlap, tta=tta,
                           crf=args.crf, batch_size=args.batch_size, formats=args.format, backend=args.backend,
                           progress=not args.quiet, resume=not args.redo)
    rank = f"rank {result['rank']}/{result['world_size']}: " if result["world_size"] > 1 else ""
    print(f"{rank}wrote {len(result['written'])} prediction(s) to {args.out}"
          + (f"; kept {len(result['resumed'])} finished earlier" if result["resumed"] else "")
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeLimits, serve

    limits = ServeLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_memory_mb=args.max_memory_mb,
                         workers=args.workers, max_queue=args.max_queue, timeout_s=args.timeout,
                         read_timeout_s=args.read_timeout, max_connections=args.max_connections,
                         batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms)
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, amp=args.amp,
          backend=args.backend, limits=limits, token=args.token)
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    from .annotate import annotate

    annotate(args.data_dir, model=args.model, classes=args.classes, sam=args.sam, host=args.host, port=args.port,
             device=args.device)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(args.out, progress=not args.quiet)
    print(result["table"])
    print(f"\nfinal validation mIoU: {result['scores']['miou']:.4f} ({100 * result['scores']['miou']:.2f}%)")
    print(f"report: {Path(result['report']).resolve()}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from . import config
    from .data import class_names
    from .data.check import check_dataset

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


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.onnx import export_onnx, export_torchscript
    from .hub import is_instance_folder, load_model

    if is_instance_folder(args.checkpoint):  # Mask R-CNN: its inference graph, at one image size
        return _instance_export(args)

    model, config = load_model(args.checkpoint)
    data = config.get("data", {})
    suffix = {"onnx": ".onnx", "torchscript": ".pt", "openvino": ".xml"}[args.format]
    out = Path(args.out) if args.out else Path(args.checkpoint) / (("pipeline" if args.pipeline else "model") + suffix)
    common = {"height": args.height, "width": args.width, "dynamic": not args.static, "pipeline": args.pipeline,
              "mean": data.get("mean"), "std": data.get("std"), "layout": args.layout,
              "min_agreement": args.min_agreement}
    if data.get("image_mode") == "raw" and (args.pipeline or args.int8):
        raise PixelwiseError("this model reads stored pixel values (data.image_mode: raw): --pipeline and --int8 "
                             "build in 8-bit RGB input; export the plain network (its input is the normalised "
                             "float tensor, see the model card's Preprocessing) and normalise as "
                             "pixelwise.data.intensity.Preprocess does")
    if args.int8 and (args.format == "torchscript" or not args.calibrate):
        raise PixelwiseError("--int8 needs --format onnx or openvino and --calibrate IMAGES (files or folders of "
                             "16-64 images like the ones the model will see; activation ranges come from them)")
    if args.format == "openvino":
        return _openvino_export(args, model, out, common, data)
    if args.format == "onnx":
        export_onnx(model, out, opset=args.opset, **common)
        if args.int8:
            from .export.onnx import IMAGENET_MEAN, IMAGENET_STD
            from .export.quantize import quantize_onnx

            quantize_onnx(out, out.with_suffix(".int8.onnx"), _calibration_images(args),
                          mean=data.get("mean") or IMAGENET_MEAN, std=data.get("std") or IMAGENET_STD,
                          reduce_range=not args.full_range, min_agreement=args.min_int8_agreement)
    else:
        if args.opset is not None:
            raise PixelwiseError("--opset applies to --format onnx only; drop it for torchscript")
        export_torchscript(model, out, **common)
    return 0


def _calibration_images(args: argparse.Namespace) -> list:
    from .data import read_image
    from .infer.predict import expand_inputs

    return [read_image(p) for p in expand_inputs(args.calibrate)[:args.calibrate_limit]]


def _openvino_export(args: argparse.Namespace, model, out: Path, common: dict, data: dict) -> int:
    """``pixelwise export --format openvino``: ONNX (checked against PyTorch) -> IR ``model.xml`` [+ int8]."""
    from .export.onnx import IMAGENET_MEAN, IMAGENET_STD, export_onnx
    from .export.openvino import export_openvino, quantize_openvino

    if args.pipeline:
        raise PixelwiseError("--pipeline applies to --format onnx; the OpenVINO IR takes the normalised tensor")
    onnx_file = out.with_suffix(".onnx")
    if not onnx_file.is_file():
        export_onnx(model, onnx_file, opset=args.opset, **common)
    export_openvino(onnx_file, out)
    print(f"wrote {out} (+ {out.with_suffix('.bin').name}, OpenVINO IR, fp32 weights) from {onnx_file.name}")
    if args.int8:
        quantize_openvino(out, out.with_name(out.stem + ".int8.xml"), _calibration_images(args),
                          mean=data.get("mean") or IMAGENET_MEAN, std=data.get("std") or IMAGENET_STD,
                          min_agreement=args.min_int8_agreement)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    out = convert(args.src, source=args.source, out=args.out)
    print(f"wrote {out} (config.json + model.safetensors); use it with eval/predict/export/serve "
          f"or as model.init_from in a train config")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .remote import push

    url = push(args.checkpoint, args.repo_id, private=args.private or None, revision=args.revision,
               commit_message=args.message)
    print(f"pushed {args.checkpoint} to {url}; load it with pixelwise predict hf://{args.repo_id} IMAGES")
    return 0


def _instance_export(args: argparse.Namespace) -> int:
    """``pixelwise export`` for Mask R-CNN: ONNX of the inference graph at one image size, checked in ONNX Runtime."""
    from .export.instance import export_instance_onnx
    from .hub import load_model

    options = (("--format torchscript", args.format != "onnx"), ("--pipeline", args.pipeline),
               ("--int8", args.int8), ("--static", args.static))
    unsupported = [flag for flag, used in options if used]
    if unsupported:
        raise PixelwiseError(f"{args.checkpoint!r} holds an instance model, exported to ONNX at one image size "
                             f"(--height, --width); {', '.join(unsupported)} do(es) not apply to it")
    model, _ = load_model(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint) / "model.onnx"
    report = export_instance_onnx(model, out, height=args.height, width=args.width, opset=args.opset or 17)
    print(f"wrote {report['path']} (opset {report['opset']}, {args.height}x{args.width} images; ONNX Runtime "
          f"agrees with PyTorch to {report.get('max_abs_diff', float('nan')):.2e})")
    return 0


def _cmd_separate(args: argparse.Namespace) -> int:
    from .recipes.audio import separate

    source, residual = separate(args.checkpoint, args.input, args.out, device=args.device)
    print(f"wrote {source} and {residual}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="pixelwise", description="Image segmentation in plain PyTorch.")
    parser.add_argument("--version", action="version", version=f"pixelwise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config, or with --resume the run folder (its config.yaml is used)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=0.01")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT_DIR/last with the run's own config.yaml; only keys that can change "
                        "mid-run (epochs, max_steps, log/val_every, device, ...) may differ")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT_DIR (default: refuse)")
    p.add_argument("--no-report", action="store_true", help="skip OUT_DIR/report.html at the end")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the data check before step 1 (every train/val pair read once, in parallel)")
    common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation split")
    p.add_argument("config")
    p.add_argument("--checkpoint", help="model folder (default: OUT_DIR/best)")
    p.add_argument("--split", help="split to evaluate (default: data.val_split)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--report", nargs="?", const="", metavar="DIR",
                   help="also write DIR/report.html (default DIR: OUT_DIR) with predictions and plots")
    common(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="segment images with a saved model")
    p.add_argument("checkpoint", help="model folder (config.json + model.safetensors) or hf://ORG/NAME")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster with oneDNN/cuDNN)")
    p.add_argument("--tile", type=int, help="sliding-window tile size, e.g. 512 (default: whole image)")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap fraction (default 0.25)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--tta", default="none", choices=["none", "flip", "scales", "flip+scales"],
                   help="test-time augmentation: horizontal flip and/or scales")
    p.add_argument("--scales", help="TTA scales, e.g. 0.75,1,1.25 (default for flip+scales)")
    p.add_argument("--crf", action="store_true", help="refine with a dense CRF")
    p.add_argument("--format", default=FORMAT_DEFAULT,
                   help="comma-separated outputs: png,color,overlay,coco-rle,csv-rle (default png,color,overlay)")
    p.add_argument("--backend", default="torch", choices=BACKEND_CHOICES)
    p.add_argument("--redo", action="store_true",
                   help="predict every image again (default: keep images an earlier run into --out finished with "
                        "the same model and settings)")
    common(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("models", help="list architectures (and encoders)")
    p.add_argument("--params", action="store_true", help="build each canonical model and count parameters")
    p.add_argument("--flops", action="store_true", help="also count FLOPs at 512x512 (slow: minutes on a CPU)")
    p.add_argument("--encoders", action="store_true", help="also list encoder names")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("check", help="read the whole dataset once and report problems and class statistics")
    p.add_argument("config")
    p.add_argument("--split", action="append", default=[], help="split to check, repeatable (default: train and val)")
    p.add_argument("--workers", type=int, default=None, help="parallel reader threads (default: CPU count)")
    p.add_argument("--json", help="JSON report path (default: OUT_DIR/check.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("serve", help="serve a saved semantic or instance model over HTTP with a browser page")
    p.add_argument("checkpoint", help="model folder (config.json + model.safetensors), semantic or instance")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (default: this one)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                   help="onnxruntime: semantic models only")
    p.add_argument("--workers", type=int, default=1, help="images segmented at the same time")
    p.add_argument("--max-queue", type=int, default=8, help="requests waiting beyond that get HTTP 503")
    p.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, help="largest upload (HTTP 413)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest width*height (HTTP 413)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before HTTP 504")
    p.add_argument("--max-memory-mb", type=int, default=1024,
                   help="largest estimated decode + inference memory of one request (HTTP 413)")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds a client may stay silent while sending its request (HTTP 408 / closed)")
    p.add_argument("--max-connections", type=int, default=512, help="open connections (oldest idle one dropped)")
    p.add_argument("--batch-max", type=int, default=1, help="dynamic batching: images per forward (1: off)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="dynamic batching: longest wait for a batch")
    p.add_argument("--token", default=None, help="bearer token clients must send (default: $PIXELWISE_TOKEN); "
                                                 "required with a --host other than this machine")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("annotate", help="label a folder of images in the browser, with proposals and retraining")
    p.add_argument("data_dir", help="folder of images (DATA_DIR/images/* or DATA_DIR/*); masks go to DATA_DIR/masks")
    p.add_argument("--model", help="model folder whose predictions are proposals (default: the last retrained one)")
    p.add_argument("--classes", help="class names, background first, e.g. background,cat,dog")
    p.add_argument("--sam", help="local Segment Anything folder (transformers SamModel.save_pretrained) for proposals")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (default: this one)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("export", help="export a saved model to ONNX or TorchScript and check it against PyTorch")
    p.add_argument("checkpoint", help="model folder (config.json + model.safetensors)")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "openvino"],
                   help="openvino: OpenVINO IR model.xml (+ model.int8.xml with --int8, NNCF), from model.onnx")
    p.add_argument("--out", help="output file (default: CHECKPOINT/model.onnx, model.pt, model.xml or pipeline.*)")
    p.add_argument("--height", type=int, default=512, help="trace and parity-check height")
    p.add_argument("--width", type=int, default=512, help="trace and parity-check width")
    p.add_argument("--static", action="store_true", help="fixed batch/height/width (default: dynamic axes)")
    p.add_argument("--pipeline", action="store_true",
                   help="include normalisation + argmax: uint8 images in, int64 labels out")
    p.add_argument("--layout", default="nhwc", choices=["nhwc", "nchw"], help="pipeline image layout")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--min-agreement", type=float, default=0.999,
                   help="fail if the argmax agreement with PyTorch is lower")
    p.add_argument("--int8", action="store_true",
                   help="also write an int8 file (NAME.int8.onnx; static quantisation, needs --calibrate)")
    p.add_argument("--calibrate", nargs="+", metavar="IMAGES", help="calibration images or folders for --int8")
    p.add_argument("--calibrate-limit", type=int, default=64, help="use at most this many calibration images")
    p.add_argument("--full-range", action="store_true",
                   help="--int8 with full 8-bit weights (only for CPUs with VNNI; default 7-bit, see docs/export.md)")
    p.add_argument("--min-int8-agreement", type=float, default=0.995,
                   help="fail if the int8 file's argmax agreement with the fp32 file is lower")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("convert", help="convert a checkpoint trained elsewhere into a pixelwise model folder")
    p.add_argument("src", help="the peer's checkpoint (torchvision, mmseg: a .pth state dict; smp, hf: "
                                      "a save_pretrained folder); or on the Hub: hf://ORG/NAME[/FILE.pth]")
    p.add_argument("--from", dest="source", required=True, choices=["torchvision", "smp", "hf", "mmseg"],
                   help="where the checkpoint comes from")
    p.add_argument("--out", required=True, help="model folder to write")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("push", help="upload a model folder to a Hugging Face Hub repository (hf://ORG/NAME)")
    p.add_argument("checkpoint", help="model folder (config.json + model.safetensors)")
    p.add_argument("repo_id", help="ORG/NAME of the Hub model repository (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (default: the repository's default branch)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("separate", help="split a WAV file into source + residual with a saved audio separator")
    p.add_argument("checkpoint", help="separator folder (config.json + model.safetensors, from save_separator)")
    p.add_argument("input", help="WAV file (PCM); other sample rates are resampled to the model's")
    p.add_argument("--out", required=True, help="output folder for NAME_source.wav and NAME_residual.wav")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_separate)

    p = sub.add_parser("demo", help="train, evaluate and report on the built-in synthetic dataset")
    p.add_argument("--out", default="runs/demo")
    common(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def _localise(args: argparse.Namespace) -> None:
    """Turn an ``hf://`` model argument into its folder in the local Hub cache (fetched if missing)."""
    from .remote import fetch, is_remote

    for name in ("checkpoint", "model"):
        source = getattr(args, name, None)
        if is_remote(source):
            if args.command == "export" and not args.out:
                raise PixelwiseError(f"exporting {source}: give --out FILE (the default, beside the weights, "
                                     f"is inside the Hub cache)")
            setattr(args, name, str(fetch(source)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _localise(args)
        return args.func(args)
    except (PixelwiseError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # The trainer's graceful stop (first SIGINT/SIGTERM) says where it saved; a raw Ctrl-C does not.
        where = f" ({err.args[0]})" if err.args else "; the last completed checkpoint is kept"
        print(f"interrupted{where}; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
