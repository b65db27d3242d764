"""The YOLO dataset view for the ultralytics kind: labels numerically right, images linked, idempotent."""
from __future__ import annotations

import json
import os

import pytest

from orchestrator import kinds
from orchestrator.errors import OrchError
from orchestrator.kinds.yolo_view import write_yolo_view
from orchestrator.synth import make_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    # sparse ids listed out of order: indices must follow the sorted ids, names alongside
    return make_synthetic_dataset(root, num_train=12, num_val=5, image_size=96, seed=3,
                                  classes=("triangle", "circle", "square"), category_ids=(11, 3, 7))


def labels_of(view: str, split: str, stem: str) -> list[list[float]]:
    with open(os.path.join(view, "labels", split, stem + ".txt")) as f:
        return [[float(v) for v in line.split()] for line in f if line.strip()]


def test_labels_are_normalised_centre_boxes_with_contiguous_indices(synth, tmp_path):
    view = str(tmp_path / "view")
    summary = write_yolo_view(synth["train"]["ann_file"], synth["train"]["img_dir"], synth["val"]["ann_file"],
                              synth["val"]["img_dir"], view)
    assert summary["names"] == ["circle", "square", "triangle"]  # ids 3, 7, 11 -> 0, 1, 2
    with open(os.path.join(view, "data.yaml")) as f:
        data = json.load(f)  # JSON is YAML; ultralytics reads it with yaml
    assert data == {"path": view, "train": "images/train", "val": "images/val", "nc": 3,
                    "names": ["circle", "square", "triangle"]}
    for split in ("train", "val"):
        with open(synth[split]["ann_file"]) as f:
            coco = json.load(f)
        index = {3: 0, 7: 1, 11: 2}
        for img in coco["images"]:
            stem = os.path.splitext(img["file_name"])[0]
            expected = []
            for ann in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
                x, y, w, h = ann["bbox"]
                W, H = img["width"], img["height"]
                expected.append([index[ann["category_id"]], (x + w / 2) / W, (y + h / 2) / H, w / W, h / H])
            got = labels_of(view, split, stem)
            assert len(got) == len(expected) >= 1
            for g, e in zip(sorted(got), sorted(expected)):
                assert g == pytest.approx(e, abs=1e-6)
    assert summary["labels"] == synth["train"]["num_annotations"] + synth["val"]["num_annotations"]


def test_images_are_symlinks_never_copies(synth, tmp_path):
    view = str(tmp_path / "view")
    write_yolo_view(synth["train"]["ann_file"], synth["train"]["img_dir"], synth["val"]["ann_file"],
                    synth["val"]["img_dir"], view)
    links = sorted(os.listdir(os.path.join(view, "images", "train")))
    assert len(links) == 12
    for name in links:
        path = os.path.join(view, "images", "train", name)
        assert os.path.islink(path) and os.readlink(path) == os.path.join(synth["train"]["img_dir"], name)


def test_writing_twice_changes_nothing_and_drops_what_is_gone(synth, tmp_path):
    view = str(tmp_path / "view")
    args = (synth["train"]["ann_file"], synth["train"]["img_dir"], synth["val"]["ann_file"], synth["val"]["img_dir"], view)
    write_yolo_view(*args)
    stamp = {p: os.lstat(p).st_mtime_ns for p in _files(view)}
    stale = os.path.join(view, "labels", "train", "old.txt")
    with open(stale, "w") as f:
        f.write("0 0.5 0.5 0.1 0.1\n")
    write_yolo_view(*args)
    assert not os.path.exists(stale)
    assert {p: os.lstat(p).st_mtime_ns for p in _files(view)} == stamp


def _files(root: str) -> list[str]:
    return sorted(os.path.join(d, n) for d, _s, names in os.walk(root) for n in names)


def test_train_split_holds_the_images_the_planner_counted(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
                       {"id": 2, "file_name": "b.jpg", "width": 10, "height": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [-2, 0, 6, 12], "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 1}],
            "categories": [{"id": 5, "name": "thing"}]}
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(coco))
    summary = write_yolo_view(str(ann), str(tmp_path / "img"), None, None, str(tmp_path / "view"))
    assert (summary["train_images"], summary["val_images"]) == (1, 2)  # b.jpg has no box: filter_empty drops it
    # the box is clipped to the image like the orch trainer clips it; the crowd box is left out
    assert labels_of(str(tmp_path / "view"), "train", "a") == [[0, 0.2, 0.5, 0.4, 1.0]]


def test_a_val_category_the_train_set_lacks_is_refused(synth, tmp_path):
    with open(synth["val"]["ann_file"]) as f:
        val = json.load(f)
    val["categories"].append({"id": 99, "name": "extra"})
    bad = tmp_path / "val.json"
    bad.write_text(json.dumps(val))
    with pytest.raises(OrchError, match=r"category ids \[99\]"):
        write_yolo_view(synth["train"]["ann_file"], synth["train"]["img_dir"], str(bad), synth["val"]["img_dir"],
                        str(tmp_path / "view"))


def test_remote_images_are_refused_with_the_fix(synth, tmp_path):
    with pytest.raises(OrchError, match="data.train.img_dir = s3://b/img is a s3:// URL"):
        write_yolo_view(synth["train"]["ann_file"], "s3://b/img", None, None, str(tmp_path / "view"))


def test_prepare_run_writes_the_view_the_command_line_names(synth, tmp_path):
    config = {"trainer": {"kind": "ultralytics", "model": "yolo11n.yaml"}, "data": {"train": synth["train"],
              "val": synth["val"], "filter_empty": True}}
    doc = {"run_dir": str(tmp_path / "run"), "config": config}
    summary = kinds.prepare_run(doc)
    assert summary["data_yaml"] == str(tmp_path / "run" / "ultralytics" / "data" / "data.yaml")
    assert os.path.exists(summary["data_yaml"])
