"""``pixelwise predict|export|convert|push|serve``: the verbs that take a saved model folder (or ``hf://``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import PixelwiseError

FORMAT_DEFAULT = "png,color,overlay"


def _instance_predict(checkpoint: str, inputs: list[str], out: str, *, device: str, amp: str, quiet: bool,
                      redo: bool) -> int:
    """``pixelwise predict`` for an instance model: overlays, semantic PNGs and COCO-RLE JSON."""
    from ..infer.instance import predict_instance_paths

    result = predict_instance_paths(checkpoint, inputs, out, device=device, amp=amp, progress=not quiet,
                                    resume=not redo)
    rank = f"rank {os.environ['RANK']}/{os.environ['WORLD_SIZE']}: " if int(os.environ.get("WORLD_SIZE", 1)) > 1 \
        else ""
    print(f"{rank}wrote {len(result['written'])} prediction(s) with {result['detections']} detection(s) to {out} "
          f"(COCO results: {result['predictions']})"
          + (f"; kept {len(result['resumed'])} finished earlier" if result["resumed"] else "")
          + (f"; skipped {len(result['failed'])} unreadable file(s)" if result["failed"] else ""))
    return 1 if result["failed"] and not result["written"] else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..hub import is_instance_folder
    from ..infer.predict import predict_paths

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
        return _instance_predict(args.checkpoint, args.inputs, args.out, device=args.device, amp=args.amp,
                                 quiet=args.quiet, redo=args.redo)
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


def cmd_export(args: argparse.Namespace) -> int:
    from ..export.onnx import export_onnx, export_torchscript
    from ..hub import is_instance_folder, load_model

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
            from ..export.onnx import IMAGENET_MEAN, IMAGENET_STD
            from ..export.quantize import quantize_onnx

            quantize_onnx(out, out.with_suffix(".int8.onnx"), _calibration_images(args),
                          mean=data.get("mean") or IMAGENET_MEAN, std=data.get("std") or IMAGENET_STD,
                          reduce_range=not args.full_range, min_agreement=args.min_int8_agreement)
    else:
        if args.opset is not None:
            raise PixelwiseError("--opset applies to --format onnx only; drop it for torchscript")
        export_torchscript(model, out, **common)
    return 0


def _calibration_images(args: argparse.Namespace) -> list:
    from ..data import read_image
    from ..infer.predict import expand_inputs

    return [read_image(p) for p in expand_inputs(args.calibrate)[:args.calibrate_limit]]


def _openvino_export(args: argparse.Namespace, model, out: Path, common: dict, data: dict) -> int:
    """``pixelwise export --format openvino``: ONNX (checked against PyTorch) -> IR ``model.xml`` [+ int8]."""
    from ..export.onnx import IMAGENET_MEAN, IMAGENET_STD, export_onnx
    from ..export.openvino import export_openvino, quantize_openvino

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


def cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import convert

    out = convert(args.src, source=args.source, out=args.out)
    print(f"wrote {out} (config.json + model.safetensors); use it with eval/predict/export/serve "
          f"or as model.init_from in a train config")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from ..remote import push

    url = push(args.checkpoint, args.repo_id, private=args.private or None, revision=args.revision,
               commit_message=args.message)
    print(f"pushed {args.checkpoint} to {url}; load it with pixelwise predict hf://{args.repo_id} IMAGES")
    return 0


def _instance_export(args: argparse.Namespace) -> int:
    """``pixelwise export`` for Mask R-CNN: ONNX of the inference graph at one image size, checked in ONNX Runtime."""
    from ..export.instance import export_instance_onnx
    from ..hub import load_model

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


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import ServeLimits, serve

    limits = ServeLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_memory_mb=args.max_memory_mb,
                         workers=args.workers, max_queue=args.max_queue, timeout_s=args.timeout,
                         read_timeout_s=args.read_timeout, max_connections=args.max_connections,
                         batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms)
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device, amp=args.amp,
          backend=args.backend, limits=limits, token=args.token)
    return 0


def localise(args: argparse.Namespace) -> None:
    """Turn an ``hf://`` model argument into its folder in the local Hub cache (fetched if missing)."""
    from ..remote import fetch, is_remote

    for name in ("checkpoint", "model"):
        source = getattr(args, name, None)
        if is_remote(source):
            if args.command == "export" and not args.out:
                raise PixelwiseError(f"exporting {source}: give --out FILE (the default, beside the weights, "
                                     f"is inside the Hub cache)")
            setattr(args, name, str(fetch(source)))
