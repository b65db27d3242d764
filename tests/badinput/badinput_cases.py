"""The bad-input catalogue: one row per input that orch must refuse cleanly (harness.py says how).

Each row: an id, an area, the command (run in a copy of the workspace: ``data/``, ``cfg.yml``,
``runs/good``, ``ckpt/*.pth``, ``yolo/``, ``voc/``, ``empty/``), what stderr must name, and the
files that make the input bad. ``{w}`` in a command is the workspace copy's absolute path.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

from badinput_harness import FRCNN, SSDLITE, case, voc_xml, write

CASES = []


def add(*args, **kwargs) -> None:
    CASES.append(case(*args, **kwargs))


def bad_cfg(extra: str) -> dict[str, str]:
    """bad.yml: the valid config plus ``extra`` (mappings merge over the include)."""
    return {"bad.yml": "__include__: [cfg.yml]\n" + extra}


def coco_edit(edit: Callable[[dict[str, Any]], Any], src: str = "data/train.json",
              out: str = "bad.json") -> Callable[[str], None]:
    """A setup writing ``out``: the workspace's ``src`` after ``edit`` (which may return a replacement)."""
    def setup(work: str) -> None:
        with open(os.path.join(work, src)) as f:
            coco = json.load(f)
        replaced = edit(coco)
        write(work, out, json.dumps(coco if replaced is None else replaced))
    return setup


def first_ann(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda coco: coco["annotations"][0].__setitem__(key, value)


def first_image(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda coco: coco["images"][0].__setitem__(key, value)


# ---------------------------------------------------------------- configs
PLAN = "plan bad.yml"
add("cfg-missing-file", "config", "plan nope.yml", "nope.yml")
add("cfg-path-is-dir", "config", "plan data", "data")
add("cfg-not-yaml", "config", PLAN, "bad.yml", files={"bad.yml": "name: [1, 2\n"})
add("cfg-top-level-list", "config", PLAN, "bad.yml", files={"bad.yml": "- 1\n- 2\n"})
add("cfg-top-level-scalar", "config", PLAN, "bad.yml", files={"bad.yml": "just a string\n"})
add("cfg-empty-file", "config", PLAN, "bad.yml", files={"bad.yml": ""})
add("cfg-not-utf8", "config", PLAN, "bad.yml", files={"bad.yml": b"__include__: [cfg.yml]\nname: caf\xe9\xff\n"})
add("cfg-binary", "config", PLAN, "bad.yml", files={"bad.yml": b"\x00\x01\x02\xff\xfe\x00"})
add("cfg-unknown-top-key", "config", PLAN, "optimiser", files=bad_cfg("optimiser: {base_lr: 0.1}\n"))
add("cfg-unknown-nested-key", "config", PLAN, "base_lrr", files=bad_cfg("optimizer: {base_lrr: 0.1}\n"))
add("cfg-augment-resize-typo", "config", PLAN, "min_sise",
    files=bad_cfg("data: {augment: {resize: {min_sise: [64], max_size: 64}}}\n"))
add("cfg-photometric-typo", "config", PLAN, "brightnes",
    files=bad_cfg("data: {augment: {photometric: {brightnes: 0.2}}}\n"))
add("cfg-param-group-typo", "config", PLAN, "patern",
    files=bad_cfg("optimizer: {param_groups: [{patern: backbone, lr_mult: 0.1}]}\n"))
add("cfg-betas-one-value", "config", PLAN, "betas", files=bad_cfg("optimizer: {name: adamw, betas: [0.9]}\n"))
add("cfg-trainable-layers-9", "config", PLAN, "trainable_backbone_layers",
    files=bad_cfg("model: {trainable_backbone_layers: 9}\n"))
add("cfg-model-kwargs-unknown", "config", PLAN, "nonsense", files=bad_cfg("model: {kwargs: {nonsense: 1}}\n"))
add("cfg-unknown-model", "config", PLAN, "resnet9000", files=bad_cfg("model: {name: resnet9000}\n"))
add("cfg-duplicate-key", "config", PLAN, "base_lr",
    files={"bad.yml": "__include__: [cfg.yml]\noptimizer: {base_lr: 0.1, base_lr: 0.2}\n"})
add("cfg-duplicate-section", "config", PLAN, "schedule",
    files={"bad.yml": "__include__: [cfg.yml]\nschedule: {epochs: 2}\nschedule: {warmup_iters: 3}\n"})
add("cfg-lr-inf", "config", PLAN, "base_lr", files=bad_cfg("optimizer: {base_lr: .inf}\n"))
add("cfg-lr-nan", "config", PLAN, "base_lr", files=bad_cfg("optimizer: {base_lr: .nan}\n"))
add("cfg-lr-negative", "config", PLAN, "base_lr", files=bad_cfg("optimizer: {base_lr: -0.1}\n"))
add("cfg-lr-string", "config", PLAN, "base_lr", files=bad_cfg("optimizer: {base_lr: fast}\n"))
add("cfg-epochs-bool", "config", PLAN, "epochs", files=bad_cfg("schedule: {epochs: true}\n"))
add("cfg-epochs-zero", "config", PLAN, "epochs", files=bad_cfg("schedule: {epochs: 0}\n"))
add("cfg-epochs-20-digits", "config", PLAN, "epochs", files=bad_cfg("schedule: {epochs: 99999999999999999999}\n"))
add("cfg-epochs-and-max-iters", "config", PLAN, "max_iters", files=bad_cfg("schedule: {epochs: 2, max_iters: 100}\n"))
add("cfg-batch-and-total-batch", "config", PLAN, "total_batch_size", files=bad_cfg("data: {batch_per_gpu: 2, total_batch_size: 16}\n"))
add("cfg-lr-policy-unknown", "config", PLAN, "lr_policy", files=bad_cfg("schedule: {lr_policy: exponential}\n"))
# milestones past the end are planned with a warning, not refused: a sweep over schedule.epochs shares them
add("cfg-keep-last-1", "config", PLAN, "keep_last", files=bad_cfg("schedule: {keep_last: 1}\n"))
add("cfg-warmup-negative", "config", PLAN, "warmup_iters", files=bad_cfg("schedule: {warmup_iters: -1}\n"))
add("cfg-num-workers-negative", "config", PLAN, "num_workers", files=bad_cfg("data: {num_workers: -2}\n"))
add("cfg-hflip-2", "config", PLAN, "hflip", files=bad_cfg("data: {augment: {hflip: 2}}\n"))
add("cfg-ann-file-null", "config", PLAN, "ann_file", files=bad_cfg("data: {train: {ann_file: null}}\n"))
add("cfg-include-missing", "config", PLAN, "nothere.yml", files={"bad.yml": "__include__: [nothere.yml]\n"})
add("cfg-include-dir", "config", PLAN, "data", files={"bad.yml": "__include__: [data]\nname: x\n"})
add("cfg-include-cycle", "config", PLAN, "cycle",
    files={"bad.yml": "__include__: [b.yml]\n", "b.yml": "__include__: [bad.yml]\n"})
add("cfg-include-not-list", "config", PLAN, "__include__", files={"bad.yml": "__include__: 5\n"})
add("cfg-include-not-yaml", "config", PLAN, "b.yml",
    files={"bad.yml": "__include__: [cfg.yml, b.yml]\n", "b.yml": "a: {b: [\n"})
add("cfg-python-tag", "config", PLAN, "bad.yml",
    files={"bad.yml": "__include__: [cfg.yml]\nname: !!python/object/apply:os.system ['touch pwned']\n"},
    why="must be refused, never executed (pwned must not appear)")
add("cfg-storage-options-scalar", "config", PLAN, "storage_options", files=bad_cfg("storage_options: 5\n"))
add("cfg-gpus-per-node-zero", "config", PLAN, "gpus_per_node", files=bad_cfg("resources: {gpus_per_node: 0}\n"))
add("cfg-executor-unknown", "config", PLAN, "executor", files=bad_cfg("resources: {executor: pbs}\n"))
add("cfg-lr-scaling-unknown", "config", PLAN, "lr_scaling", files=bad_cfg("optimizer: {lr_scaling: cubic}\n"))
add("cfg-optimizer-unknown", "config", PLAN, "optimizer.name", files=bad_cfg("optimizer: {name: adagrad9}\n"))
add("cfg-show-bad", "config", "config show bad.yml", "base_lrr", files=bad_cfg("optimizer: {base_lrr: 0.1}\n"))
add("cfg-submit-init-checkpoint-missing", "config", "submit bad.yml --dry-run", "nope.pth",
    files=bad_cfg("model: {init_checkpoint: ckpt/nope.pth}\n"))
add("cfg-submit-work-dir-is-file", "config", "submit bad.yml --executor slurm --partition dev", "cfg.yml",
    files=bad_cfg("work_dir: cfg.yml\n"))

# ---------------------------------------------------------------- overrides
add("ov-not-key-value", "override", "plan cfg.yml foo", "foo")
add("ov-empty-key", "override", "plan cfg.yml =3", "=3")
add("ov-unknown-key", "override", "plan cfg.yml optimizer.base_lrr=0.1", "base_lrr")
add("ov-unknown-top-key", "override", "plan cfg.yml foo=1", "foo")
add("ov-bad-yaml-value", "override", ["plan", "cfg.yml", "optimizer.base_lr=[1,"], "base_lr")
add("ov-batch-string", "override", "plan cfg.yml data.batch_per_gpu=two", "batch_per_gpu")
add("ov-batch-negative", "override", "plan cfg.yml data.batch_per_gpu=-1", "batch_per_gpu")
add("ov-batch-zero", "override", "plan cfg.yml data.batch_per_gpu=0", "batch_per_gpu")
add("ov-batch-float", "override", "plan cfg.yml data.batch_per_gpu=2.5", "batch_per_gpu")
add("ov-into-scalar", "override", "plan cfg.yml optimizer.base_lr.x=1", "base_lr")
add("ov-replace-section", "override", "plan cfg.yml optimizer=3", "optimizer")
add("ov-lr-inf", "override", "plan cfg.yml optimizer.base_lr=.inf", "base_lr")
add("ov-model-name", "override", "plan cfg.yml model.name=yolov8", "yolov8")
add("ov-submit-epochs-negative", "override", "submit cfg.yml --dry-run schedule.epochs=-1", "epochs")
add("ov-submit-unknown-key", "override", "submit cfg.yml --executor slurm --partition dev optimizer.momentun=0.9",
    "momentun")
add("ov-include-key", "override", "plan cfg.yml __include__=[x.yml]", "__include__")

# ---------------------------------------------------------------- resources and flags
SUBMIT = "submit cfg.yml --executor slurm --partition dev"
add("res-plan-gpus-zero", "resources", "plan cfg.yml --gpus 0", "gpus")
add("res-plan-gpus-negative", "resources", "plan cfg.yml --gpus -4", "gpus")
add("res-plan-gpus-text", "resources", "plan cfg.yml --gpus x", "gpus")
add("res-plan-gpus-not-whole-nodes", "resources", "plan cfg.yml --gpus 3 resources.gpus_per_node=2", "gpus")
add("res-plan-train-images-negative", "resources", "plan cfg.yml --train-images -5", "train-images")
add("res-plan-train-images-zero", "resources", "plan cfg.yml --train-images 0", "train-images")
add("res-nodes-contradict", "resources", SUBMIT + " --dry-run --nodes 4 --gpus 16 --gpus-per-node 2", "nodes")
add("res-time-text", "resources", SUBMIT + " --dry-run --time forever", "forever")
add("res-time-minutes-99", "resources", SUBMIT + " --dry-run --time 1:99:00", "1:99:00")
add("res-partition-injection", "resources", ["submit", "cfg.yml", "--executor", "slurm", "--dry-run",
                                             "--partition", "dev; rm -rf /"], "partition")
add("res-account-newline", "resources", SUBMIT.split() + ["--dry-run", "--account", "a\nb"], "account")
add("res-name-slash", "resources", SUBMIT + " --dry-run --name a/b", "a/b")
add("res-name-empty", "resources", SUBMIT.split() + ["--dry-run", "--name", ""], "name")
add("res-name-dotdot", "resources", SUBMIT + " --name ..", "..")
add("res-mem-text", "resources", SUBMIT + " --dry-run --mem-per-gpu lots", "lots")
add("res-cpus-per-gpu-zero", "resources", SUBMIT + " --dry-run --cpus-per-gpu 0", "cpus")
add("res-qos-space", "resources", SUBMIT.split() + ["--dry-run", "--qos", "a b"], "qos")
add("res-constraint-control-char", "resources", SUBMIT.split() + ["--dry-run", "--constraint", "x\x07"],
    "constraint")
add("res-executor-unknown", "resources", "submit cfg.yml --dry-run --executor pbs", "pbs")
add("res-local-too-many-gpus", "resources", "submit cfg.yml --executor local --gpus 64 --gpus-per-node 8", "local")
add("res-max-requeues-negative", "resources", SUBMIT + " --dry-run resources.max_requeues=-1", "max_requeues")
add("res-gpus-real-submit-zero", "resources", SUBMIT + " --gpus 0", "gpus")

# ---------------------------------------------------------------- datasets (what `orch submit` checks first)
DATA = SUBMIT + " data.train.ann_file=bad.json"
add("ds-broken-json", "dataset", DATA, "bad.json", files={"bad.json": '{"images": ['})
add("ds-empty-file", "dataset", DATA, "bad.json", files={"bad.json": ""})
add("ds-binary-file", "dataset", DATA, "bad.json", files={"bad.json": b"\x89PNG\r\n\x1a\n\x00\x00"})
add("ds-top-level-list", "dataset", DATA, "bad.json", files={"bad.json": "[]"})
add("ds-top-level-string", "dataset", DATA, "bad.json", files={"bad.json": '"coco"'})
add("ds-no-images-key", "dataset", DATA, "images", files={"bad.json": '{"annotations": [], "categories": []}'})
add("ds-images-not-list", "dataset", DATA, "images", files={"bad.json": '{"images": {}, "annotations": []}'})
add("ds-no-categories", "dataset", DATA, "categor", setup=coco_edit(lambda c: c.pop("categories")))
add("ds-zero-images", "dataset", DATA, "bad.json",
    setup=coco_edit(lambda c: c.update(images=[], annotations=[])))
add("ds-no-annotations", "dataset", DATA, "bad.json", setup=coco_edit(lambda c: c.update(annotations=[])),
    why="filter_empty drops every image: nothing to train on")
add("ds-bbox-strings", "dataset", DATA, "bbox", setup=coco_edit(first_ann("bbox", ["1", "2", "3", "4"])))
add("ds-bbox-three-numbers", "dataset", DATA, "bbox", setup=coco_edit(first_ann("bbox", [1, 2, 3])))
add("ds-bbox-negative-size", "dataset", DATA, "bbox", setup=coco_edit(first_ann("bbox", [10, 10, -5, 8])))
add("ds-bbox-nan", "dataset", DATA, "bbox", setup=coco_edit(first_ann("bbox", [float("nan"), 1, 5, 5])))
add("ds-bbox-infinity", "dataset", DATA, "bbox", setup=coco_edit(first_ann("bbox", [1, 1, float("inf"), 5])))
add("ds-bbox-null", "dataset", DATA, "bbox", setup=coco_edit(first_ann("bbox", None)))
add("ds-image-width-negative", "dataset", DATA, "width", setup=coco_edit(first_image("width", -64)))
add("ds-image-height-nan", "dataset", DATA, "height", setup=coco_edit(first_image("height", float("nan"))))
add("ds-image-size-missing", "dataset", DATA, "width", setup=coco_edit(lambda c: c["images"][0].pop("width") and None))
add("ds-image-id-string", "dataset", DATA, "id", setup=coco_edit(first_image("id", "one")))
add("ds-duplicate-image-ids", "dataset", DATA, "duplicate",
    setup=coco_edit(lambda c: c["images"][1].__setitem__("id", c["images"][0]["id"])))
add("ds-duplicate-category-ids", "dataset", DATA, "duplicate",
    setup=coco_edit(lambda c: c["categories"][1].__setitem__("id", c["categories"][0]["id"])))
add("ds-unknown-category-id", "dataset", DATA, "categor", setup=coco_edit(first_ann("category_id", 99)))
add("ds-unknown-image-id", "dataset", DATA, "image", setup=coco_edit(first_ann("image_id", 999)))
add("ds-file-name-missing", "dataset", DATA, "file_name", setup=coco_edit(lambda c: c["images"][0].pop("file_name") and None))
add("ds-ann-file-missing", "dataset", SUBMIT + " data.train.ann_file=nope.json", "nope.json")
add("ds-ann-file-is-dir", "dataset", SUBMIT + " data.train.ann_file=data", "data")
add("ds-val-broken", "dataset", SUBMIT + " data.val.ann_file=bad.json", "bad.json", files={"bad.json": "{"})
add("ds-val-missing", "dataset", SUBMIT + " data.val.ann_file=nope.json", "nope.json")
add("ds-img-dir-missing", "dataset", SUBMIT + " data.train.img_dir=nope", "nope")
add("ds-img-dir-empty", "dataset", SUBMIT + " data.train.img_dir=empty", "empty")
add("ds-val-img-dir-empty", "dataset", SUBMIT + " data.val.img_dir=empty", "empty")
add("ds-plan-broken-json", "dataset", "plan cfg.yml data.train.ann_file=bad.json", "bad.json",
    files={"bad.json": '{"images": [}'})
add("ds-plan-bbox-strings", "dataset", "plan cfg.yml data.train.ann_file=bad.json", "bbox",
    setup=coco_edit(first_ann("bbox", ["a", "b", "c", "d"])))
add("ds-check-missing", "dataset", "data check nope.json", "nope.json")
add("ds-check-images-missing", "dataset", "data check data/train.json --images nope", "nope")
add("ds-check-max-examples-negative", "dataset", "data check data/train.json --max-examples -1", "max-examples")

# ---------------------------------------------------------------- converters
YOLO = "data convert yolo yolo --out out.json"
LABEL = "yolo/labels/a.txt"
add("yolo-pixels", "converter", YOLO, ["a.txt:1", "normalised"], files={LABEL: "0 32 32 16 16\n"})
add("yolo-negative-width", "converter", YOLO, ["a.txt:1", "width"], files={LABEL: "0 0.5 0.5 -0.2 0.1\n"})
add("yolo-zero-height", "converter", YOLO, ["a.txt:2", "height"], files={LABEL: "0 0.5 0.5 0.2 0.1\n0 0.5 0.5 0.2 0\n"})
add("yolo-nan", "converter", YOLO, ["a.txt:1", "nan"], files={LABEL: "0 nan 0.5 0.2 0.2\n"})
add("yolo-inf", "converter", YOLO, ["a.txt:1", "inf"], files={LABEL: "0 0.5 inf 0.2 0.2\n"})
add("yolo-polygon-pixels", "converter", YOLO, ["a.txt:1"], files={LABEL: "0 10 10 40 10 40 40\n"})
add("yolo-text-values", "converter", YOLO, "a.txt:1", files={LABEL: "0 a b c d\n"})
add("yolo-class-out-of-range", "converter", YOLO, "a.txt:1", files={LABEL: "5 0.5 0.5 0.1 0.1\n"})
add("yolo-class-negative", "converter", YOLO, "a.txt:1", files={LABEL: "-1 0.5 0.5 0.1 0.1\n"})
add("yolo-class-float", "converter", YOLO, "a.txt:1", files={LABEL: "0.5 0.5 0.5 0.1 0.1\n"})
add("yolo-three-fields", "converter", YOLO, "a.txt:1", files={LABEL: "0 0.5 0.5\n"})
add("yolo-out-is-classes-file", "converter", "data convert yolo yolo --out yolo/classes.txt", "classes.txt")
add("yolo-out-is-label-file", "converter", "data convert yolo yolo --out yolo/labels/a.txt", "a.txt")
add("yolo-out-is-image", "converter", "data convert yolo yolo --out yolo/images/a.jpg", "a.jpg")
add("yolo-out-is-src-dir", "converter", "data convert yolo yolo --out yolo", "yolo")
add("yolo-src-missing", "converter", "data convert yolo nope --out out.json", "nope")
add("yolo-src-is-file", "converter", "data convert yolo cfg.yml --out out.json", "cfg.yml")
add("yolo-no-class-names", "converter", YOLO, "classes.txt", files={"yolo/classes.txt": None})
add("yolo-empty-class-file", "converter", YOLO, "classes.txt", files={"yolo/classes.txt": "\n\n"})
add("yolo-data-yaml-bad-names", "converter", YOLO, "data.yaml",
    files={"yolo/classes.txt": None, "yolo/data.yaml": "names: {0: a, 2: b}\n"})
add("yolo-image-set", "converter", YOLO + " --image-set train", "image-set")
add("yolo-no-images", "converter", "data convert yolo empty --out out.json", "empty")
add("yolo-classes-path-missing", "converter", YOLO + " --classes nope/classes.txt", "nope/classes.txt")

VOC = "data convert voc voc --out out.json"
XML = "voc/Annotations/a.xml"
add("voc-xmax-below-xmin", "converter", VOC, ["a.xml", "xmax"], files={XML: voc_xml(xmin=40, xmax=10)})
add("voc-ymax-below-ymin", "converter", VOC, ["a.xml", "ymax"], files={XML: voc_xml(ymin=50, ymax=20)})
add("voc-nan-coordinate", "converter", VOC, ["a.xml", "nan"], files={XML: voc_xml(xmin="nan")})
add("voc-inf-coordinate", "converter", VOC, ["a.xml", "inf"], files={XML: voc_xml(xmax="inf")})
add("voc-negative-size", "converter", VOC, ["a.xml", "width"],
    files={XML: voc_xml().replace("<width>64</width>", "<width>-64</width>")})
add("voc-broken-xml", "converter", VOC, "a.xml", files={XML: "<annotation><object>"})
add("voc-no-bndbox", "converter", VOC, "bndbox",
    files={XML: "<annotation><filename>a.jpg</filename><size><width>64</width><height>64</height></size>"
                "<object><name>circle</name></object></annotation>"})
add("voc-no-name", "converter", VOC, "name", files={XML: voc_xml(name="")})
add("voc-text-coordinate", "converter", VOC, "xmin", files={XML: voc_xml(xmin="ten")})
add("voc-out-is-xml", "converter", "data convert voc voc --out voc/Annotations/a.xml", "a.xml")
add("voc-out-is-image-set", "converter", "data convert voc voc --out voc/ImageSets/Main/train.txt", "train.txt")
add("voc-src-missing", "converter", "data convert voc nope --out out.json", "nope")
add("voc-no-xml", "converter", "data convert voc empty --out out.json", "empty")
add("voc-image-set-missing", "converter", VOC + " --image-set val", "val")
add("voc-image-set-stray-id", "converter", VOC + " --image-set train", "zzz",
    files={"voc/ImageSets/Main/train.txt": "a\nzzz\n"})
add("voc-classes-miss-a-name", "converter", VOC + " --classes dog,cat", "circle")

add("split-val-zero", "converter", "data split data/train.json --val 0 --out-dir out", "--val")
add("split-val-above-one", "converter", "data split data/train.json --val 1.5 --out-dir out", "--val")
add("split-val-nan", "converter", "data split data/train.json --val nan --out-dir out", "--val")
add("split-val-text", "converter", "data split data/train.json --val half --out-dir out", "half")
add("split-into-input-folder", "converter", "data split data/train.json", "train.json",
    why="the default out dir is the input's folder: train.json would overwrite the input")
add("split-out-over-val", "converter", "data split data/val.json --out-dir data", "val.json")
add("split-broken-json", "converter", "data split bad.json --out-dir out", "bad.json", files={"bad.json": "{"})
add("split-one-image", "converter", "data split bad.json --out-dir out", "bad.json",
    setup=coco_edit(lambda c: c.update(images=c["images"][:1])))
add("split-duplicate-ids", "converter", "data split bad.json --out-dir out", "bad.json",
    setup=coco_edit(lambda c: c["images"][1].__setitem__("id", c["images"][0]["id"])))
add("split-out-dir-is-file", "converter", "data split data/train.json --out-dir cfg.yml", "cfg.yml")

add("fix-out-is-input", "converter", "data check data/train.json --fix data/train.json", "train.json")
add("fix-out-is-input-other-spelling", "converter", "data check data/train.json --fix ./data/../data/train.json",
    "train.json")
add("fix-out-is-input-absolute", "converter", "data check data/train.json --fix {w}/data/train.json", "train.json")
add("fix-out-is-image", "converter", "data check data/train.json --images data/train --fix data/train/000000.jpg",
    "000000.jpg")
add("fix-out-is-dir", "converter", "data check data/train.json --fix data", "data")
add("fix-input-missing", "converter", "data check nope.json --fix out.json", "nope.json")

add("synth-into-dataset", "converter", "data synth data --train 2 --val 1 --size 32", "data")
add("synth-into-file", "converter", "data synth cfg.yml --train 2 --val 1 --size 32", "cfg.yml")
add("synth-into-yolo-dataset", "converter", "data synth yolo/images --train 2 --val 1 --size 32", "images",
    files={"yolo/images/train.json": "{}"})
add("synth-size-zero", "converter", "data synth out --size 0", "size")
add("synth-train-negative", "converter", "data synth out --train -3", "train")

# ---------------------------------------------------------------- checkpoints (eval / predict / export)
OUTSIDE = ["--model", SSDLITE, "--categories", "data/train.json"]
EVAL_DATA = ["--data", "data/val.json", "--images", "data/val", "--workers", "0"]
# text and empty files are refused before torch is imported; the others need torch.load to tell
for name, needs_torch in (("text", False), ("empty", False), ("truncated", True), ("pickle", True),
                          ("list", True), ("nomodel", True)):
    ckpt = f"ckpt/{name}.pth"
    add(f"ckpt-{name}-eval", "checkpoint", ["eval", ckpt, *OUTSIDE, *EVAL_DATA], f"{name}.pth", torch=needs_torch)
    if name in ("text", "pickle"):
        add(f"ckpt-{name}-predict", "checkpoint", ["predict", ckpt, "data/val", "--out", "preds.json", *OUTSIDE],
            f"{name}.pth", torch=needs_torch)
        add(f"ckpt-{name}-export", "checkpoint", ["export", ckpt, "--out", "m.onnx", *OUTSIDE], f"{name}.pth",
            torch=needs_torch)
add("ckpt-txt-extension-eval", "checkpoint", ["eval", "ckpt/notes.txt", *OUTSIDE, *EVAL_DATA], "notes.txt")
add("ckpt-missing", "checkpoint", ["eval", "ckpt/nope.pth", *OUTSIDE, *EVAL_DATA], "nope.pth")
add("ckpt-is-dir", "checkpoint", ["predict", "data", "data/val", "--out", "p.json", *OUTSIDE], "data")
add("ckpt-wrong-model", "checkpoint", ["eval", "ckpt/model.pth", "--model", FRCNN, "--categories",
                                       "data/train.json", *EVAL_DATA], FRCNN, torch=True)
add("ckpt-unknown-model", "checkpoint", ["eval", "ckpt/model.pth", "--model", "yolov8", *EVAL_DATA], "yolov8")
add("ckpt-outside-run-no-model", "checkpoint", ["eval", "ckpt/model.pth", *EVAL_DATA], "--model")
add("ckpt-categories-broken", "checkpoint", ["eval", "ckpt/model.pth", "--model", SSDLITE, "--categories", "bad.json",
                                             *EVAL_DATA], "bad.json", files={"bad.json": "{"})
add("ckpt-categories-wrong-count", "checkpoint", ["eval", "ckpt/model.pth", "--model", SSDLITE, "--categories",
                                                  "bad.json", *EVAL_DATA], "bad.json",
    setup=coco_edit(lambda c: c.update(categories=c["categories"][:2])), torch=True)
add("ckpt-marker-mismatch", "checkpoint", ["eval", "runs/good", *EVAL_DATA], "best.pth",
    setup=lambda w: write(w, "runs/good/checkpoints/best.pth",
                          open(os.path.join(w, "ckpt/model.pth"), "rb").read() + b"x"), torch=True)
add("ckpt-run-without-checkpoint", "checkpoint", ["eval", "runs/trunc", *EVAL_DATA], "trunc")

add("eval-images-wrong-folder", "model-cmd", ["eval", "runs/good", "--data", "data/val.json", "--images",
                                              "yolo/images", "--workers", "0"], ["yolo/images", "000000.jpg"])
add("eval-images-empty-folder", "model-cmd", ["eval", "runs/good", "--data", "data/val.json", "--images", "empty",
                                              "--workers", "0"], "empty")
add("eval-images-missing-folder", "model-cmd", ["eval", "runs/good", "--data", "data/val.json", "--images", "nope",
                                                "--workers", "0"], "nope")
add("eval-data-without-images", "model-cmd", "eval runs/good --data data/val.json", "--images")
add("eval-data-broken", "model-cmd", ["eval", "runs/good", "--data", "bad.json", "--images", "data/val",
                                      "--workers", "0"], "bad.json", files={"bad.json": "[1,"})
add("eval-batch-zero", "model-cmd", "eval runs/good --batch 0", "batch")
add("eval-workers-negative", "model-cmd", "eval runs/good --workers -1", "workers")
add("predict-draw-into-images", "model-cmd", "predict runs/good data/val --out preds.json --draw data/val", "data/val")
add("predict-draw-into-images-other-spelling", "model-cmd",
    "predict runs/good data/val --out preds.json --draw ./data/../data/val/", "val")
add("predict-draw-into-images-absolute", "model-cmd", "predict runs/good {w}/data/val --out p.json --draw data/val",
    "val")
add("predict-out-is-checkpoint", "model-cmd", "predict runs/good data/val --out runs/good/checkpoints/best.pth",
    "best.pth")
add("predict-out-is-checkpoint-file", "model-cmd",
    ["predict", "ckpt/model.pth", "data/val", "--out", "ckpt/model.pth", *OUTSIDE], "model.pth")
add("predict-out-is-image", "model-cmd", "predict runs/good data/val --out data/val/000000.jpg", "000000.jpg")
add("predict-out-is-ann", "model-cmd", "predict runs/good data/val --out data/val.json --ann data/val.json",
    "val.json")
add("predict-out-is-categories", "model-cmd",
    ["predict", "ckpt/model.pth", "data/val", "--out", "data/train.json", *OUTSIDE], "train.json")
add("predict-out-is-dir", "model-cmd", "predict runs/good data/val --out data", "data")
add("predict-images-missing", "model-cmd", "predict runs/good nope --out p.json", "nope")
add("predict-images-empty", "model-cmd", "predict runs/good empty --out p.json", "empty")
add("predict-score-thr-above-one", "model-cmd", "predict runs/good data/val --out p.json --score-thr 2", "score-thr")
add("predict-score-thr-nan", "model-cmd", "predict runs/good data/val --out p.json --score-thr nan", "score-thr")
add("predict-ann-broken", "model-cmd", "predict runs/good data/val --out p.json --ann bad.json", "bad.json",
    files={"bad.json": "{"})
add("predict-ann-other-folder", "model-cmd", "predict runs/good data/val --out p.json --ann bad.json", "bad.json",
    setup=coco_edit(lambda c: [i.__setitem__("file_name", "x" + i["file_name"]) for i in c["images"]],
                    src="data/val.json"), torch=True)
add("export-out-is-checkpoint", "model-cmd", "export runs/good --out runs/good/checkpoints/best.pth", "best.pth")
add("export-out-is-checkpoint-file", "model-cmd", ["export", "ckpt/model.pth", "--out", "ckpt/model.pth", *OUTSIDE],
    "model.pth")
add("export-out-is-marker", "model-cmd", "export runs/good --out runs/good/checkpoints/best.pth.done", "best.pth.done")
add("export-out-is-config", "model-cmd", ["export", "ckpt/model.pth", "--config", "cfg.yml", "--out", "cfg.yml"],
    "cfg.yml")
add("export-out-is-dir", "model-cmd", "export runs/good --out data", "data")
add("export-box-tol-negative", "model-cmd", "export runs/good --check --box-tol -1", "box-tol")
add("export-opset-zero", "model-cmd", "export runs/good --opset 0", "opset")
add("export-opset-huge", "model-cmd", "export runs/good --opset 999", "opset")
add("export-check-images-missing", "model-cmd", "export runs/good --check --images nope --out m.onnx", "nope")
add("model-min-size-zero", "model-cmd", "eval runs/good --min-size 0", "min-size")

# ---------------------------------------------------------------- run names and run dirs
for command in ("status", "resume", "logs", "cancel"):
    add(f"run-{command}-missing", "run", f"{command} nope", "nope")
add("run-status-not-a-run", "run", "status data", "data")
add("run-status-truncated-plan", "run", "status runs/trunc", "plan.json")
add("run-resume-truncated-plan", "run", "resume runs/trunc", "plan.json")
add("run-cancel-truncated-plan", "run", "cancel runs/trunc", "plan.json")
add("run-status-name-dotdot", "run", "status ../w/runs/nope", "nope")
add("run-status-empty-name", "run", ["status", ""], "run")
add("run-logs-file", "run", "logs cfg.yml", "cfg.yml")
add("run-status-broken-submissions", "run", "status runs/good", "submissions.json",
    files={"runs/good/submissions.json": "[{"})
add("run-resume-broken-submissions", "run", "resume runs/good", "submissions.json",
    files={"runs/good/submissions.json": "[{"})
add("run-submit-existing-name", "run", SUBMIT + " --name good", "good")
add("run-plan-not-object", "run", "status runs/good", "plan.json", files={"runs/good/plan.json": "[]"})

# ---------------------------------------------------------------- sweeps
SWEEP = "sweep cfg.yml --executor slurm --partition dev --dry-run"
add("sweep-no-params", "sweep", SWEEP, "-p")
add("sweep-param-no-equals", "sweep", SWEEP + " -p optimizer.base_lr", "optimizer.base_lr")
add("sweep-param-no-values", "sweep", SWEEP + " -p optimizer.base_lr=", "optimizer.base_lr")
add("sweep-param-unknown-key", "sweep", SWEEP + " -p optimizer.base_lrr=0.1,0.2", "base_lrr")
add("sweep-param-duplicate-key", "sweep", SWEEP + " -p optimizer.base_lr=0.1,0.2 -p optimizer.base_lr=0.3",
    "optimizer.base_lr")
add("sweep-param-bad-type", "sweep", SWEEP + " -p data.batch_per_gpu=two,4", "batch_per_gpu")
add("sweep-param-bad-value", "sweep", SWEEP + " -p optimizer.base_lr=0.1,-1", "base_lr")
add("sweep-random-zero", "sweep", SWEEP + " --random 0 -p optimizer.base_lr=uniform(0.01,0.1)", "random")
add("sweep-random-negative", "sweep", SWEEP + " --random -3 -p optimizer.base_lr=uniform(0.01,0.1)", "random")
add("sweep-loguniform-zero", "sweep", SWEEP + " --random 2 -p optimizer.base_lr=loguniform(0,0.1)", "loguniform")
add("sweep-loguniform-reversed", "sweep", SWEEP + " --random 2 -p optimizer.base_lr=loguniform(0.1,0.001)",
    "loguniform")
add("sweep-uniform-one-arg", "sweep", SWEEP + " --random 2 -p optimizer.base_lr=uniform(0.1)", "uniform")
add("sweep-randint-float", "sweep", SWEEP + " --random 2 -p data.batch_per_gpu=randint(1.5,3)", "randint")
add("sweep-choice-empty", "sweep", SWEEP + " --random 2 -p data.batch_per_gpu=choice()", "choice")
add("sweep-unknown-distribution", "sweep", SWEEP + " --random 2 -p optimizer.base_lr=normal(0,1)", "normal")
add("sweep-distribution-in-grid", "sweep", SWEEP + " -p optimizer.base_lr=loguniform(0.001,0.1)", "loguniform")
add("sweep-max-parallel-zero", "sweep", SWEEP + " -p optimizer.base_lr=0.1,0.2 --max-parallel 0", "max-parallel")
add("sweep-nodes-differ", "sweep", SWEEP + " -p resources.gpus=1,2", "gpus")
add("sweep-local-executor", "sweep", "sweep cfg.yml --dry-run -p optimizer.base_lr=0.1,0.2", "executor")
add("sweep-bad-config", "sweep", "sweep bad.yml --executor slurm --dry-run -p optimizer.base_lr=0.1,0.2",
    "base_lrr", files=bad_cfg("optimizer: {base_lrr: 0.1}\n"))
add("sweep-real-bad-param", "sweep", "sweep cfg.yml --executor slurm --partition dev -p data.batch_per_gpu=0,2",
    "batch_per_gpu")
add("sweep-status-missing", "sweep", "sweep status nope", "nope")
add("sweep-resume-missing", "sweep", "sweep resume nope", "nope")
add("sweep-status-run-not-sweep", "sweep", "sweep status runs/good", "sweep.json")
add("sweep-status-broken-json", "sweep", "sweep status runs/sw", "sweep.json", files={"runs/sw/sweep.json": "{"})
add("sweep-resume-broken-json", "sweep", "sweep resume runs/sw", "sweep.json", files={"runs/sw/sweep.json": "{"})


# Cases that fail on this branch only because another package of issue 11 is not merged yet
# (config validation, dry-run/sbatch path, run state, partition/sweep checks, preflight). The test
# marks them xfail(strict=False); the lead empties this set after merging every branch.
AWAITING_OTHER_PACKAGES: set[str] = set()   # every case is fixed: a case that fails is a bug, never a set entry

_ids = [c.id for c in CASES]
assert len(_ids) == len(set(_ids)), sorted({i for i in _ids if _ids.count(i) > 1})
assert AWAITING_OTHER_PACKAGES <= set(_ids), AWAITING_OTHER_PACKAGES - set(_ids)
