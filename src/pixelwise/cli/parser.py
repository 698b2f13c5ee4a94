"""The ``pixelwise`` argument parser: every verb, its options and the function that runs it."""

from __future__ import annotations

import argparse

from .models import FORMAT_DEFAULT, cmd_convert, cmd_export, cmd_predict, cmd_push, cmd_serve
from .runs import cmd_annotate, cmd_check, cmd_demo, cmd_eval, cmd_models, cmd_pq, cmd_separate, cmd_train

BACKEND_CHOICES = ["torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16", "openvino-int8"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation split")
    p.add_argument("config")
    p.add_argument("--checkpoint", help="model folder (default: OUT_DIR/best)")
    p.add_argument("--split", help="split to evaluate (default: data.val_split)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--report", nargs="?", const="", metavar="DIR",
                   help="also write DIR/report.html (default DIR: OUT_DIR) with predictions and plots")
    common(p)
    p.set_defaults(func=cmd_eval)

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
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list architectures (and encoders)")
    p.add_argument("--params", action="store_true", help="build each canonical model and count parameters")
    p.add_argument("--flops", action="store_true", help="also count FLOPs at 512x512 (slow: minutes on a CPU)")
    p.add_argument("--encoders", action="store_true", help="also list encoder names")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("check", help="read the whole dataset once and report problems and class statistics")
    p.add_argument("config")
    p.add_argument("--split", action="append", default=[], help="split to check, repeatable (default: train and val)")
    p.add_argument("--workers", type=int, default=None, help="parallel reader threads (default: CPU count)")
    p.add_argument("--json", help="JSON report path (default: OUT_DIR/check.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_check)

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
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("annotate", help="label a folder of images in the browser, with proposals and retraining")
    p.add_argument("data_dir", help="folder of images (DATA_DIR/images/* or DATA_DIR/*); masks go to DATA_DIR/masks")
    p.add_argument("--model", help="model folder whose predictions are proposals (default: the last retrained one)")
    p.add_argument("--classes", help="class names, background first, e.g. background,cat,dog")
    p.add_argument("--sam", help="local Segment Anything folder (transformers SamModel.save_pretrained) for proposals")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (default: this one)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_annotate)

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
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="convert a checkpoint trained elsewhere into a pixelwise model folder")
    p.add_argument("src", help="the peer's checkpoint (torchvision, mmseg: a .pth state dict; smp, hf: "
                                      "a save_pretrained folder); or on the Hub: hf://ORG/NAME[/FILE.pth]")
    p.add_argument("--from", dest="source", required=True, choices=["torchvision", "smp", "hf", "mmseg"],
                   help="where the checkpoint comes from")
    p.add_argument("--out", required=True, help="model folder to write")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("push", help="upload a model folder to a Hugging Face Hub repository (hf://ORG/NAME)")
    p.add_argument("checkpoint", help="model folder (config.json + model.safetensors)")
    p.add_argument("repo_id", help="ORG/NAME of the Hub model repository (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (default: the repository's default branch)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("pq", help="panoptic quality (PQ, SQ, RQ) of COCO-format panoptic predictions")
    p.add_argument("gt_json", help="ground truth: COCO panoptic JSON (categories with isthing, annotations)")
    p.add_argument("gt_dir", help="folder of the ground-truth panoptic PNGs")
    p.add_argument("pred_json", help="predictions in the same format (annotations[].segments_info)")
    p.add_argument("pred_dir", help="folder of the predicted panoptic PNGs")
    p.add_argument("--per-class", action="store_true", help="also print every category's PQ, SQ, RQ, TP, FP, FN")
    p.add_argument("--json", help="write the full result to this JSON file")
    p.set_defaults(func=cmd_pq)

    p = sub.add_parser("separate", help="split a WAV file into source + residual with a saved audio separator")
    p.add_argument("checkpoint", help="separator folder (config.json + model.safetensors, from save_separator)")
    p.add_argument("input", help="WAV file (PCM); other sample rates are resampled to the model's")
    p.add_argument("--out", required=True, help="output folder for NAME_source.wav and NAME_residual.wav")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_separate)

    p = sub.add_parser("demo", help="train, evaluate and report on the built-in synthetic dataset")
    p.add_argument("--out", default="runs/demo")
    common(p)
    p.set_defaults(func=cmd_demo)
    return parser
