"""`orch data ...`: check, fix, convert, split and synthesise datasets (torch-free).

Parsing and printing only; the logic lives in :mod:`orchestrator.datatools` (imported inside the
handlers so that ``orch --help`` stays fast).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator import storage
from orchestrator.cli_core import positive_int
from orchestrator.cli_model import non_negative_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="check, fix, convert, split or synthesise a COCO dataset",
                          description="Dataset tools that need no GPU and no torch.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True

    check = data_sub.add_parser(
        "check", help="report what in a COCO dataset would break training",
        description="Check a COCO annotation file and its images. Exit status 1 when something would "
                    "break training or give wrong results (errors), 0 when there are only warnings. "
                    "With --fix the exit status is that of the cleaned copy.")
    check.add_argument("ann", help="COCO annotation file (local path or URL)")
    check.add_argument("--images", metavar="DIR",
                       help="image folder that file_name is relative to; without it only the json is checked")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--fix", metavar="OUT.json",
                       help="also write a cleaned copy here (the input is never modified)")
    check.add_argument("--max-examples", type=non_negative_int, default=5, metavar="N",
                       help="examples shown per kind of finding (default: 5)")
    check.set_defaults(func=cmd_check)

    convert = data_sub.add_parser(
        "convert", help="convert a YOLO or Pascal VOC dataset to one COCO json",
        description="Convert YOLO (images/ + labels/, or .txt beside the images) or Pascal VOC "
                    "(Annotations/*.xml + JPEGImages/) to COCO. file_name entries are relative to the "
                    "images dir printed at the end: use it as data.*.img_dir / --images.")
    convert.add_argument("format", choices=["yolo", "voc"], help="source format")
    convert.add_argument("src", help="dataset folder")
    convert.add_argument("--out", required=True, metavar="ANN.json", help="COCO file to write")
    convert.add_argument("--classes", metavar="FILE_OR_LIST",
                         help="class names: a classes.txt / data.yaml file or a comma-separated list "
                              "(YOLO: index order; default: classes.txt or data.yaml in SRC. VOC: fixes the "
                              "category order; default: all names, sorted)")
    convert.add_argument("--image-set", metavar="NAME",
                         help="VOC only: convert just the ids in SRC/ImageSets/Main/NAME.txt (e.g. train, val, "
                              "trainval); default: every XML")
    convert.set_defaults(func=cmd_convert)

    split = data_sub.add_parser(
        "split", help="split a COCO file into train.json and val.json by image",
        description="Deterministic split by image (same seed, same split); annotations follow their "
                    "images, categories are copied to both files.")
    split.add_argument("ann", help="COCO annotation file")
    split.add_argument("--val", type=float, default=0.2, metavar="FRACTION",
                       help="fraction of images for val (default: 0.2)")
    split.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    split.add_argument("--out-dir", metavar="DIR",
                       help="folder for train.json and val.json (default: the input's folder)")
    split.set_defaults(func=cmd_split)

    synth = data_sub.add_parser(
        "synth", help="write a small synthetic shapes dataset (train + val) for demos and tests",
        description="Coloured shapes on noise with exact boxes: OUT_DIR/train.json, val.json, train/, val/.")
    synth.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (local path or URL)")
    synth.add_argument("--train", type=positive_int, metavar="N", help="training images (default: 400)")
    synth.add_argument("--val", type=positive_int, metavar="N", help="validation images (default: 100)")
    synth.add_argument("--size", type=positive_int, metavar="PX", help="longer image side in pixels (default: 320)")
    synth.add_argument("--seed", type=int, help="random seed (default: 0)")
    synth.set_defaults(func=cmd_synth)


def cmd_check(args: argparse.Namespace) -> int:
    from orchestrator import datatools

    ann = storage.absolute(args.ann)
    images = storage.absolute(args.images) if args.images else None
    if images and not storage.isdir(images):
        raise datatools.DatasetError(f"--images {images} is not a folder: pass the folder that {ann}'s file_name "
                                     f"entries are relative to (or leave --images out to check only the json)")
    if args.fix:
        from orchestrator import modelio

        out = storage.absolute(args.fix)
        modelio.refuse_output_over_inputs(out, "--fix", [("the annotation file", ann)])
        modelio.refuse_output_in_folder(out, "--fix", images, "--images")
    report = datatools.check_dataset(ann, images, max_examples=args.max_examples, read_images=bool(images))
    if not args.fix:
        print(report.to_json() if args.json else report.render_text())
        return 0 if report.ok else 1

    out = storage.absolute(args.fix)
    summary = datatools.fix_dataset(ann, out, images_url=images)
    # the fix already dropped images that are missing or disagree with their files: json checks suffice
    fixed = datatools.check_dataset(out, images, max_examples=args.max_examples, read_images=False)
    if args.json:
        print(json.dumps({**report.to_dict(), "fix": summary, "fixed": fixed.to_dict()}, indent=2))
    else:
        print(report.render_text())
        print()
        print(_format_fix(summary))
        print(f"cleaned copy: {'OK' if fixed.ok else 'still has errors'}"
              + ("" if fixed.ok else ": " + ", ".join(f"{f.count} {f.kind}" for f in fixed.errors)))
    return 0 if fixed.ok else 1


def _format_fix(summary: dict[str, Any]) -> str:
    lines = [f"wrote {summary['out_url']}: {summary['images_out']}/{summary['images_in']} images, "
             f"{summary['annotations_out']}/{summary['annotations_in']} annotations, "
             f"{summary['categories_out']}/{summary['categories_in']} categories kept"]
    for title, counts in (("dropped", summary["dropped"]), ("changed", summary["changed"])):
        if counts:
            lines.append(f"  {title}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return "\n".join(lines)


def cmd_convert(args: argparse.Namespace) -> int:
    from orchestrator import datatools

    classes = datatools.read_class_names(args.classes) if args.classes else None
    out = storage.absolute(args.out)
    if args.classes and storage.exists(args.classes):
        from orchestrator import modelio

        modelio.refuse_output_over_inputs(out, "--out", [("the --classes file", storage.absolute(args.classes))])
    if args.format == "yolo":
        if args.image_set:
            raise datatools.DatasetError("--image-set reads VOC's ImageSets/Main lists; for YOLO, convert the "
                                         "folder of that split (e.g. images/train) instead")
        summary = datatools.convert_yolo(args.src, out, classes=classes)
        details = (f"layout {summary['layout']}, class names from {summary['class_names_from']}; "
                   f"{summary['images_without_labels']} images without a label file (kept as background), "
                   f"{summary['labels_without_images']} label files without an image (ignored)")
    else:
        summary = datatools.convert_voc(args.src, out, classes=classes, image_set=args.image_set)
        details = f"{summary['difficult_as_crowd']} difficult objects kept as iscrowd=1 (ignored in training/eval)"
    print(f"wrote {summary['out_url']}: {summary['images']} images, {summary['annotations']} boxes, "
          f"{summary['categories']} categories")
    print(f"  {details}")
    for problem in summary.get("unreadable_images", [])[:5]:
        print(f"  skipped unreadable image {problem}")
    if len(summary.get("unreadable_images", [])) > 5:
        print(f"  ... and {len(summary['unreadable_images']) - 5} more unreadable images skipped")
    if len(summary.get("subfolders", [])) > 1:
        print(f"  note: the images of {', '.join(summary['subfolders'])} all went into one file; convert "
              f"{storage.join(summary['images_dir'], summary['subfolders'][0])} etc. to keep splits apart")
    print(f"file_name entries are relative to {summary['images_dir']}: use it as data.*.img_dir "
          f"(or --images for orch data check)")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from orchestrator import datatools

    ann = storage.absolute(args.ann)
    out_dir = storage.absolute(args.out_dir) if args.out_dir else storage.parent(ann)
    summary = datatools.split_dataset(ann, args.val, args.seed, storage.join(out_dir, "train.json"),
                                      storage.join(out_dir, "val.json"))
    for name in ("train", "val"):
        part = summary[name]
        print(f"wrote {part['url']}: {part['images']} images, {part['annotations']} annotations")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from orchestrator import synth  # lazy: numpy + PIL drawing only when asked for

    options = {"num_train": args.train, "num_val": args.val, "image_size": args.size, "seed": args.seed}
    out_dir = storage.absolute(args.out_dir)
    result = synth.make_synthetic_dataset(out_dir, **{k: v for k, v in options.items() if v is not None})
    print(f"wrote a synthetic dataset under {out_dir}")
    if isinstance(result, dict):
        for split_name, entry in result.items():
            print(f"  {split_name}: {json.dumps(entry) if not isinstance(entry, str) else entry}")
    return 0

