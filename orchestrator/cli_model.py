"""`orch eval | predict | export`: use a trained checkpoint. Parsing and printing only.

The logic lives in :mod:`jobs.predict` and :mod:`jobs.export`, imported inside the handlers:
they need torch, and ``orch --help`` must not wait for it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from orchestrator import storage
from orchestrator.errors import OrchError
from orchestrator.cli_core import positive_int

CKPT_HELP = ("checkpoint (.pth, any URL), or a run dir / run name: its best.pth, else final.pth, else the latest "
             "complete checkpoint")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="COCO bbox mAP of a checkpoint on an annotated image set",
        description="Evaluate a checkpoint: the 12 COCO numbers and a per-class AP table. For a checkpoint "
                    "in a run dir the model and the val set come from the run's plan.json.")
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument("--data", metavar="VAL.json", help="COCO annotation file (default: the run's data.val.ann_file)")
    p.add_argument("--images", metavar="DIR", help="its image folder (default: the run's data.val.img_dir)")
    p.add_argument("--batch", type=positive_int, default=4, metavar="N", help="images per forward pass (default: 4)")
    p.add_argument("--workers", type=non_negative_int, default=2, metavar="N",
                   help="image-loading processes (default: 2)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_model_arguments(p, device=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "predict", help="detect objects in a folder of images; write COCO results (and drawings)",
        description="Run a checkpoint on every image (jpg, png, bmp, webp, tif) directly in IMAGES_DIR (any "
                    "URL). Writes a COCO results list with the original category ids; each entry also has "
                    "file_name. Image ids are 1..N in file-name order, or those of --ann.")
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument("images", metavar="IMAGES_DIR", help="folder of images (local path or URL)")
    p.add_argument("--out", required=True, metavar="PREDS.json", help="results file to write")
    p.add_argument("--score-thr", type=fraction, default=0.3, metavar="S",
                   help="keep detections scoring at least this (default: 0.3)")
    p.add_argument("--batch", type=positive_int, default=4, metavar="N", help="images per forward pass (default: 4)")
    p.add_argument("--draw", metavar="OUT_DIR", help="also write each image with its boxes, labels and scores drawn")
    p.add_argument("--ann", metavar="ANN.json",
                   help="take image ids from this COCO file (by file_name), so the results can be scored against it")
    _add_model_arguments(p, device=True)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX with post-processing (NMS) inside",
        description="ONNX graph: images float32 [B,3,H,W] RGB in [0,1] -> boxes [N,4] (xyxy px), scores [N], "
                    "labels [N] (1..K; category ids in the metadata), batch_index [N]. B is 1 unless "
                    "--dynamic-batch. RT-DETRv2 and D-FINE: the official deploy interface, any B: images "
                    "[B,3,S,S] resized to the input size + orig_target_sizes [B,2] (w, h) -> labels [B,K], "
                    "boxes [B,K,4], scores [B,K]. --check compares onnxruntime with torch on real images.")
    p.add_argument("checkpoint", metavar="CKPT|RUN", help=CKPT_HELP)
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    p.add_argument("--opset", type=positive_int, default=17, metavar="N", help="ONNX opset (default: 17)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="accept any batch size (a Loop over the images; images of one batch share a size)")
    p.add_argument("--out", metavar="PATH", help="file to write (default: the checkpoint's path with .onnx)")
    p.add_argument("--check", action="store_true",
                   help="run onnx.checker and compare onnxruntime with torch on real images; exit 1 if they disagree")
    p.add_argument("--images", metavar="DIR", help="images for --check (default: the run's data.val.img_dir)")
    p.add_argument("--check-images", type=positive_int, default=4, metavar="N",
                   help="how many images --check uses (default: 4)")
    p.add_argument("--box-tol", type=non_negative_float, default=0.05, metavar="PX",
                   help="largest box coordinate difference --check accepts, in pixels (default: 0.05)")
    _add_model_arguments(p, device=False)
    p.set_defaults(func=cmd_export)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:  # False for NaN too
        raise argparse.ArgumentTypeError(f"{text!r} is not a score between 0 and 1")
    return value


def _add_model_arguments(p: argparse.ArgumentParser, device: bool) -> None:
    group = p.add_argument_group("model (found from the run dir when the checkpoint is in one)")
    group.add_argument("--config", metavar="CFG", help="the run's config (YAML): model and training data")
    group.add_argument("--model", metavar="NAME", help="model name, for a checkpoint outside a run dir")
    group.add_argument("--categories", metavar="TRAIN.json",
                       help="the training annotation file: its categories map labels to category ids")
    group.add_argument("--min-size", type=positive_int, metavar="PX", help="override the model's input min_size")
    group.add_argument("--max-size", type=positive_int, metavar="PX", help="override the model's input max_size")
    group.add_argument("--work-dir", help="where run names are looked up (default: ./runs or $ORCH_WORK_DIR)")
    if device:
        group.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def _load(args: argparse.Namespace, fallback_categories: str | None = None, device: str | None = None):
    from jobs.predict import load_model

    loaded = load_model(args.checkpoint, model_name=args.model, config_file=args.config,
                        categories_file=args.categories, fallback_categories_file=fallback_categories,
                        min_size=args.min_size, max_size=args.max_size,
                        device=device or getattr(args, "device", None), work_dir=args.work_dir)
    return loaded


def _check_checkpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    """Torch-free, before anything is loaded: the checkpoint exists, looks like torch.save's output
    and its model can be known. Returns (checkpoint URL, run dir or None)."""
    from orchestrator import modelio
    from orchestrator.schema import MODEL_NAMES

    url, run_dir = modelio.resolve_checkpoint(args.checkpoint, args.work_dir)
    modelio.check_checkpoint_header(url)
    modelio.require_model_source(url, run_dir, args.model, args.config, MODEL_NAMES)
    return url, run_dir


def _check_json_inputs(*pairs: tuple[str, str | None]) -> None:
    """Read each local annotation file given on the command line now, not after the model has loaded
    (remote ones may need the run's storage options, which loading the model applies)."""
    from orchestrator import cocofile

    for _flag, path in pairs:
        if path and storage.is_local(path):
            cocofile.load_coco(storage.absolute(path))


def _model_inputs(args: argparse.Namespace, url: str) -> list[tuple[str, str | None]]:
    """(role, url) of every file a model command reads: its outputs must be none of them."""
    from orchestrator import runs

    return [("the checkpoint", url), ("the checkpoint's marker", url + runs.MARKER_SUFFIX),
            ("the --config file", args.config and storage.absolute(args.config)),
            ("the --categories file", args.categories and storage.absolute(args.categories))]


def _val_split(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """--data/--images, else the run's (or --config's) data.val; read without torch."""
    if args.data or args.images:
        if not (args.data and args.images):
            raise OrchError("pass both --data VAL.json and --images DIR (or neither, to use the run's val set)")
        return storage.absolute(args.data), storage.absolute(args.images)
    return None, None


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    from orchestrator import datatools

    ann_file, img_dir = _val_split(args)
    _check_checkpoint(args)
    _check_json_inputs(("--categories", args.categories))
    checked = ann_file is not None and storage.is_local(ann_file) and storage.is_local(img_dir)
    if checked:  # a wrong --images fails here, not in a DataLoader worker after the model has loaded
        datatools.check_first_images(ann_file, img_dir, "--images")
    from jobs.predict import evaluate_checkpoint

    loaded = _load(args, fallback_categories=ann_file)
    flag = "--images"
    if ann_file is None:  # the run's val set
        val = ((loaded.config or {}).get("data") or {}).get("val") or {}
        ann_file, img_dir, flag = val.get("ann_file"), val.get("img_dir"), "the run's data.val.img_dir"
        if not (ann_file and img_dir):
            raise OrchError(f"no val set for {loaded.checkpoint_url}: pass --data VAL.json --images DIR")
    if not checked:  # remote files are readable once load_model applied the run's storage options
        datatools.check_first_images(ann_file, img_dir, flag)
    result = evaluate_checkpoint(loaded, ann_file, img_dir, batch_size=args.batch, workers=max(0, args.workers))
    notes = loaded.notes + result["notes"]
    if args.json:
        print(json.dumps(_eval_json(loaded, result, ann_file, img_dir, notes), indent=2))
        return 0
    _print_notes(notes)
    print(loaded.describe())
    print(f"data       {ann_file} ({result['num_images']} images, {img_dir})")
    print(result["summary"])
    print(f"{result['num_detections']} detections on {result['num_images']} images in {result['seconds']:.1f} s "
          f"({loaded.device}, {result['backend']})")
    return 0


def _eval_json(loaded, result: dict[str, Any], ann_file: str, img_dir: str, notes: list[str]) -> dict[str, Any]:
    return {"checkpoint": loaded.checkpoint_url, "iteration": loaded.iteration, "model": loaded.name,
            "num_classes": loaded.num_classes, "category_ids": loaded.category_ids,
            "categories_from": loaded.categories_from, "ann_file": ann_file, "img_dir": img_dir,
            "num_images": result["num_images"], "num_detections": result["num_detections"],
            "stats": result["stats"],
            "per_class": [{"category": n, "AP": None if ap != ap else ap}  # NaN (no ground truth) is not JSON
                          for n, ap in result["per_class"]],
            "backend": result["backend"], "seconds": result["seconds"], "notes": notes}


def cmd_predict(args: argparse.Namespace) -> int:
    from orchestrator import modelio

    url, _run_dir = _check_checkpoint(args)
    images = storage.absolute(args.images)
    if storage.is_local(images):
        modelio.list_images(images)
    out = storage.absolute(args.out)
    draw_dir = storage.absolute(args.draw) if args.draw else None
    inputs = _model_inputs(args, url) + [("the --ann file", args.ann and storage.absolute(args.ann)),
                                         ("IMAGES_DIR", images)]
    modelio.refuse_output_over_inputs(out, "--out", inputs)
    modelio.refuse_output_in_folder(out, "--out", images, "IMAGES_DIR")
    if draw_dir:
        modelio.refuse_output_over_inputs(draw_dir, "--draw", [("IMAGES_DIR", images)] + inputs[:-1], folder=True)
    _check_json_inputs(("--ann", args.ann), ("--categories", args.categories))
    from jobs.predict import predict_folder

    loaded = _load(args, fallback_categories=args.ann)
    _print_notes(loaded.notes)
    summary = predict_folder(loaded, images, out, score_thr=args.score_thr,
                             batch_size=args.batch, draw_dir=draw_dir, image_ids_file=args.ann)
    print(loaded.describe())
    print(f"wrote {summary['out']}: {summary['detections']} detections (score >= {args.score_thr:g}) on "
          f"{summary['images']} images, {summary['images_without_detections']} without any, in "
          f"{summary['seconds']:.1f} s; category ids from {loaded.categories_from}")
    if draw_dir:
        print(f"drew {summary['images']} images into {draw_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.check:
        from orchestrator import extras

        extras.require("onnxruntime", "orch export --check")  # before the model is loaded and exported
    from orchestrator import modelio

    url, _run_dir = _check_checkpoint(args)
    out = storage.absolute(args.out) if args.out else (url[:-4] if url.endswith(".pth") else url) + ".onnx"
    modelio.refuse_output_over_inputs(out, "--out", _model_inputs(args, url))
    if args.check and args.images and storage.is_local(args.images):
        modelio.list_images(storage.absolute(args.images))
    _check_json_inputs(("--categories", args.categories))
    from jobs import export
    from jobs.predict import list_images
    from orchestrator import modelspec

    loaded = _load(args, device="cpu")
    if loaded.category_ids is None:
        loaded.notes.append("the category ids are unknown, so the metadata will not map labels 1..K to them; pass "
                            "--categories TRAIN.json to record them")
    _print_notes(loaded.notes)
    check_dir = None
    if args.check:  # find the images before the slow part
        check_dir = args.images or (((loaded.config or {}).get("data") or {}).get("val") or {}).get("img_dir")
        if not check_dir:
            raise OrchError(f"--check needs images and {loaded.checkpoint_url} has no run val set: pass --images DIR")
        check_dir = storage.absolute(check_dir)
        names = list_images(check_dir)[:args.check_images]
    if modelspec.is_detr(loaded.name):  # RT-DETRv2 / D-FINE: the official deploy graph's interface
        return _export_detr(args, loaded, out, check_dir, names if args.check else [])
    result = export.export_onnx(loaded, out, opset=args.opset, dynamic_batch=args.dynamic_batch)
    print(loaded.describe())
    batch = "B" if args.dynamic_batch else "1"
    print(f"wrote {out} ({result['bytes'] / 1e6:.1f} MB, opset {args.opset}, {result['seconds']:.1f} s): images "
          f"[{batch},3,H,W] -> boxes, scores, labels, batch_index")
    if not args.check:
        return 0
    report = export.check_onnx(result["payload"], loaded, check_dir, names, dynamic_batch=args.dynamic_batch,
                               box_tol_px=args.box_tol)
    print("onnx.checker: OK")
    print(report.render_text())
    return 0 if report.ok else 1


def _export_detr(args: argparse.Namespace, loaded, out: str, check_dir: str | None, names: list[str]) -> int:
    from jobs import detr_export

    result = detr_export.export_onnx(loaded, out, opset=args.opset)
    print(loaded.describe())
    size = result["size"]
    print(f"wrote {out} ({result['bytes'] / 1e6:.1f} MB, opset {args.opset}, {result['seconds']:.1f} s): images "
          f"[B,3,{size},{size}] (RGB in [0,1], resized to {size}x{size}) + orig_target_sizes [B,2] (w, h) -> "
          f"labels [B,K], boxes [B,K,4], scores [B,K]; any batch size, no NMS")
    if not args.check:
        return 0
    report = detr_export.check_onnx(result["payload"], loaded, check_dir, names, box_tol_px=args.box_tol)
    print("onnx.checker: OK")
    print(report.render_text())
    return 0 if report.ok else 1
