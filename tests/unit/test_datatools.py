"""orch data check / fix / convert / split / synth on tiny datasets the tests write themselves."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import pytest
from PIL import Image

from orchestrator import cli
from orchestrator.datatools import (
    ERROR, FINDING_KINDS, WARNING, CheckReport, DatasetError, check_dataset, convert_voc, convert_yolo, fix_dataset,
    read_class_names, split_dataset,
)
from orchestrator.errors import OrchError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_png(path, width, height, colour=(90, 120, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def ann(ann_id, image_id, category_id, bbox, area=True):
    a = {"image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0}
    if ann_id is not None:
        a["id"] = ann_id
    if area:
        a["area"] = 25.0
    return a


# ---------------------------------------------------------------------------------------------
# A dataset with every defect `check` reports, each one a known number of times.

def make_defect_dataset(root):
    images_dir = os.path.join(root, "images")
    write_png(os.path.join(images_dir, "a.png"), 100, 80)
    write_png(os.path.join(images_dir, "b.png"), 100, 80)
    # c.png is never written: missing
    with open(os.path.join(images_dir, "d.png"), "wb") as f:
        f.write(b"this is not a png")  # unreadable
    write_png(os.path.join(images_dir, "e.png"), 50, 50)  # json says 60x60
    write_png(os.path.join(images_dir, "f.png"), 40, 40)  # no annotations
    write_png(os.path.join(images_dir, "h.png"), 30, 30)  # json width 0
    images = [
        {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.png", "width": 100, "height": 80},
        {"id": 3, "file_name": "c.png", "width": 100, "height": 80},
        {"id": 4, "file_name": "d.png", "width": 100, "height": 80},
        {"id": 5, "file_name": "e.png", "width": 60, "height": 60},
        {"id": 6, "file_name": "f.png", "width": 40, "height": 40},
        {"id": 2, "file_name": "b_again.png", "width": 100, "height": 80},  # duplicate id
        {"file_name": "g.png", "width": 10, "height": 10},  # no id
        {"id": 7, "file_name": "h.png", "width": 0, "height": 30},  # no usable size
    ]
    categories = [
        {"id": 1, "name": "cat"},
        {"id": 2, "name": "dog"},
        {"id": 2, "name": "dog again"},  # duplicate id
        {"id": 3, "name": "bird"},  # unused
        {"name": "no id"},  # malformed
    ]
    annotations = [
        ann(1, 1, 1, [10, 10, 20, 20]),
        ann(2, 1, 2, [90, 70, 20, 20]),  # outside a 100x80 image: clipped to [90, 70, 10, 10]
        ann(3, 2, 1, [10, 10, 0, 5]),  # zero width
        ann(14, 1, 1, [10, 10, -5, 8]),  # negative width: written wrong
        ann(4, 2, 1, [200, 200, 10, 10]),  # entirely outside: under 1 px once clipped
        ann(5, 2, 1, [1, 2, "x", 4]),  # malformed bbox
        ann(6, 2, 1, [1, 2, 3]),  # malformed bbox
        ann(7, 99, 1, [1, 1, 5, 5]),  # unknown image
        ann(8, 1, 9, [1, 1, 5, 5]),  # unknown category
        ann(1, 2, 2, [5, 5, 10, 10]),  # duplicate annotation id
        ann(9, 3, 1, [1, 1, 5, 5]),  # on the missing image
        ann(10, 4, 1, [1, 1, 5, 5]),  # on the unreadable image
        ann(11, 5, 2, [5, 5, 10, 10]),  # on the image whose size disagrees
        ann(12, 7, 1, [1, 1, 5, 5]),  # on the image without a size in the json
        ann(None, 1, 1, [30, 30, 5, 5]),  # no id
        ann(13, 1, 1, [40, 40, 5, 5], area=False),  # no area
    ]
    ann_file = os.path.join(root, "defects.json")
    write_json(ann_file, {"info": {"v": 1}, "images": images, "annotations": annotations,
                          "categories": categories})
    return ann_file, images_dir


EXPECTED_FINDINGS = {  # kind -> (count, severity); needs the image files
    "malformed_image": (2, ERROR),
    "duplicate_image_id": (1, ERROR),
    "malformed_category": (1, ERROR),
    "duplicate_category_id": (1, ERROR),
    "duplicate_annotation_id": (1, ERROR),
    "malformed_annotation": (1, ERROR),
    "malformed_bbox": (2, ERROR),
    "unknown_image_ref": (1, ERROR),
    "unknown_category_ref": (1, ERROR),
    "missing_image": (1, ERROR),
    "unreadable_image": (1, ERROR),
    "size_mismatch": (1, ERROR),
    "negative_box": (1, ERROR),
    "degenerate_box": (1, WARNING),
    "tiny_box": (1, WARNING),
    "box_outside_image": (1, WARNING),
    "missing_area": (1, WARNING),
    "image_without_annotations": (1, WARNING),
    "category_without_annotations": (1, WARNING),
}
IMAGE_IO_KINDS = {"missing_image", "unreadable_image", "size_mismatch"}


@pytest.fixture(scope="module")
def defects(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("defects"))
    ann_file, images_dir = make_defect_dataset(root)
    return ann_file, images_dir, check_dataset(ann_file, images_dir)


@pytest.mark.parametrize("kind", sorted(EXPECTED_FINDINGS))
def test_check_reports_each_defect_with_its_count_and_severity(defects, kind):
    report = defects[2]
    count, severity = EXPECTED_FINDINGS[kind]
    assert report.count(kind) == count, report.render_text()
    assert report.findings[kind].severity == severity == FINDING_KINDS[kind][0]
    assert len(report.findings[kind].examples) == count


def test_check_reports_nothing_else(defects):
    report = defects[2]
    assert set(report.findings) == set(EXPECTED_FINDINGS)
    assert not report.ok
    assert (report.num_images, report.num_annotations, report.num_categories) == (9, 16, 5)


def test_check_examples_name_the_offender(defects):
    report = defects[2]
    assert "c.png" in report.findings["missing_image"].examples[0]
    assert "d.png" in report.findings["unreadable_image"].examples[0]
    assert "not an image format PIL can read" in report.findings["unreadable_image"].examples[0]
    assert "json says 60x60, the file is 50x50" in report.findings["size_mismatch"].examples[0]
    assert "annotation 2" in report.findings["box_outside_image"].examples[0]
    assert "image_id 99" in report.findings["unknown_image_ref"].examples[0]
    assert "category_id 9" in report.findings["unknown_category_ref"].examples[0]
    assert "'f.png'" in report.findings["image_without_annotations"].examples[0]
    assert "'bird'" in report.findings["category_without_annotations"].examples[0]


def test_check_histogram_counts_boxes_and_images_per_class(defects):
    rows = {row["name"]: (row["id"], row["annotations"], row["images"]) for row in defects[2].histogram}
    assert rows == {"cat": (1, 11, 5), "dog": (2, 3, 3), "bird": (3, 0, 0)}


def test_check_renders_text_and_json(defects):
    report = defects[2]
    text = report.render_text()
    for kind in EXPECTED_FINDINGS:
        assert f"[{kind}]" in text
    assert "FAILED" in text and "per-class histogram" in text and "bird" in text
    data = json.loads(report.to_json())
    assert data["ok"] is False
    assert {f["kind"]: f["count"] for f in data["errors"] + data["warnings"]} == {
        k: c for k, (c, _) in EXPECTED_FINDINGS.items()}
    assert all(f["severity"] == ERROR for f in data["errors"])


def test_raise_for_errors_names_the_file_and_the_fix(defects):
    ann_file, _, report = defects
    with pytest.raises(DatasetError, match=r"would break training: 2 malformed_image, 1 malformed_category, .*--fix"):
        report.raise_for_errors()
    cheap = check_dataset(ann_file, None, read_images=False)  # what `orch submit` runs
    with pytest.raises(DatasetError, match="defects.json would break training"):
        cheap.raise_for_errors()
    CheckReport(ann_file, None, False).raise_for_errors()  # nothing found: nothing raised


def test_check_max_examples_caps_the_examples_not_the_count(defects):
    ann_file, images_dir, _ = defects
    report = check_dataset(ann_file, images_dir, max_examples=1)
    assert report.count("malformed_bbox") == 2
    assert len(report.findings["malformed_bbox"].examples) == 1
    assert "... and 1 more" in report.render_text()


def test_cheap_check_does_only_json_checks(defects, monkeypatch):
    ann_file, images_dir, _ = defects
    from orchestrator.datatools import _common

    def no_io(url):
        raise AssertionError(f"cheap check read {url}")

    monkeypatch.setattr(_common, "read_image_size", no_io)
    report = check_dataset(ann_file, images_dir, read_images=False)
    assert not report.images_read
    expected = {k: c for k, (c, _) in EXPECTED_FINDINGS.items() if k not in IMAGE_IO_KINDS}
    assert {k: f.count for k, f in report.findings.items()} == expected


def test_check_on_memory_urls():
    from orchestrator import storage

    root = "memory://datatools-check"
    storage.write_bytes(f"{root}/img/ok.png", _png_bytes(20, 10))
    storage.write_text(f"{root}/ann.json", json.dumps({
        "images": [{"id": 1, "file_name": "ok.png", "width": 20, "height": 10},
                   {"id": 2, "file_name": "gone.png", "width": 20, "height": 10}],
        "annotations": [ann(1, 1, 1, [0, 0, 5, 5]), ann(2, 2, 1, [0, 0, 5, 5])],
        "categories": [{"id": 1, "name": "x"}]}))
    report = check_dataset(f"{root}/ann.json", f"{root}/img")
    assert set(report.findings) == {"missing_image"}
    assert report.count("missing_image") == 1


def _png_bytes(width, height):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_check_missing_or_broken_file_is_a_user_error(tmp_path):
    with pytest.raises(OrchError, match="does not exist"):
        check_dataset(str(tmp_path / "nope.json"), None)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(OrchError, match="not valid JSON"):
        check_dataset(str(bad), None)
    bad.write_text(json.dumps({"images": [], "annotations": {}}))
    with pytest.raises(OrchError, match="'annotations' must be a list"):
        check_dataset(str(bad), None)


# ---------------------------------------------------------------------------------------------
# fix

def test_fix_output_passes_check_and_input_is_untouched(tmp_path):
    ann_file, images_dir = make_defect_dataset(str(tmp_path))
    before = open(ann_file, "rb").read()
    out = str(tmp_path / "fixed" / "clean.json")
    summary = fix_dataset(ann_file, out, images_url=images_dir)
    assert open(ann_file, "rb").read() == before

    report = check_dataset(out, images_dir)
    assert report.ok, report.render_text()
    assert not report.errors
    assert summary["dropped"] == {
        "malformed_image": 1, "duplicate_image_id": 1, "missing_image": 1, "unreadable_image": 1,
        "size_mismatch": 1, "malformed_category": 1, "duplicate_category_id": 1,
        "unknown_image_ref": 1, "annotation_of_dropped_image": 3, "unknown_category_ref": 1,
        "malformed_bbox": 2, "negative_box": 1, "degenerate_box": 1, "tiny_box": 1}
    assert summary["changed"] == {"box_clipped": 1, "area_filled": 1, "annotation_id_reassigned": 2}
    assert (summary["images_out"], summary["annotations_out"], summary["categories_out"]) == (4, 6, 3)

    fixed = json.load(open(out))
    assert fixed["info"] == {"v": 1}
    by_bbox_origin = {tuple(a["bbox"][:2]): a for a in fixed["annotations"]}
    assert by_bbox_origin[(90, 70)]["bbox"] == [90, 70, 10, 10]
    assert by_bbox_origin[(40, 40)]["area"] == 25
    ids = [a["id"] for a in fixed["annotations"]]
    assert len(set(ids)) == len(ids)
    h = next(i for i in fixed["images"] if i["file_name"] == "h.png")
    assert (h["width"], h["height"]) == (30, 30)  # read from the file


def test_fix_without_images_passes_cheap_check(tmp_path):
    ann_file, _ = make_defect_dataset(str(tmp_path))
    out = str(tmp_path / "clean.json")
    summary = fix_dataset(ann_file, out)
    assert summary["dropped"]["malformed_image"] == 2  # h.png's size cannot be read without --images
    assert check_dataset(out, None, read_images=False).ok


def test_fix_refuses_to_overwrite_its_input(tmp_path):
    ann_file, _ = make_defect_dataset(str(tmp_path))
    before = open(ann_file, "rb").read()
    for out in (ann_file, os.path.join(str(tmp_path), ".", "defects.json")):
        with pytest.raises(DatasetError, match="would overwrite its input"):
            fix_dataset(ann_file, out)
    assert open(ann_file, "rb").read() == before


# ---------------------------------------------------------------------------------------------
# convert: YOLO and VOC files written from the same known boxes give the same COCO boxes

CLASSES = ["cat", "dog"]  # sorted, so VOC's alphabetical order matches YOLO's index order
KNOWN = {  # file -> (width, height, [(class, [x, y, w, h] in pixels, difficult)])
    "one.png": (64, 48, [("cat", [0, 0, 10, 20], 0), ("dog", [30, 5, 34, 43], 0)]),
    "two.png": (100, 50, [("dog", [12, 7, 25, 13], 1)]),
    "empty.png": (32, 32, []),
}


def write_yolo(root, layout="images/labels", classes_file="classes.txt"):
    for name, (w, h, boxes) in KNOWN.items():
        if layout == "images/labels":
            image_path = os.path.join(root, "images", "train", name)
            label_path = os.path.join(root, "labels", "train", name.replace(".png", ".txt"))
        else:
            image_path = os.path.join(root, name)
            label_path = os.path.join(root, name.replace(".png", ".txt"))
        write_png(image_path, w, h)
        if not boxes:
            continue  # a background image has no label file
        os.makedirs(os.path.dirname(label_path), exist_ok=True)
        with open(label_path, "w") as f:
            for cls, (x, y, bw, bh), _ in boxes:
                f.write(f"{CLASSES.index(cls)} {(x + bw / 2) / w!r} {(y + bh / 2) / h!r} {bw / w!r} {bh / h!r}\n")
    if classes_file == "classes.txt":
        with open(os.path.join(root, "classes.txt"), "w") as f:
            f.write("\n".join(CLASSES) + "\n")
    elif classes_file == "data.yaml":
        with open(os.path.join(root, "data.yaml"), "w") as f:
            f.write("path: .\ntrain: images/train\nnames:\n  0: cat\n  1: dog\n")


def write_voc(root):
    for name, (w, h, boxes) in KNOWN.items():
        write_png(os.path.join(root, "JPEGImages", name), w, h)
        objects = "".join(
            f"<object><name>{cls}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + bw}</xmax><ymax>{y + bh}</ymax>"
            f"</bndbox></object>" for cls, (x, y, bw, bh), difficult in boxes)
        xml = (f"<annotation><folder>JPEGImages</folder><filename>{name}</filename>"
               f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>")
        os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
        with open(os.path.join(root, "Annotations", name.replace(".png", ".xml")), "w") as f:
            f.write(xml)


def boxes_by_file(coco_path):
    coco = json.load(open(coco_path))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    out = {i["file_name"]: [] for i in coco["images"]}
    for a in coco["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"], a["iscrowd"]))
    return coco, {k: sorted(v, key=lambda t: (t[0], t[1])) for k, v in out.items()}


def expected_boxes(prefix=""):
    return {prefix + name: sorted(((cls, box) for cls, box, _ in boxes), key=lambda t: (t[0], t[1]))
            for name, (_, _, boxes) in KNOWN.items()}


def assert_boxes_close(actual, expected, tol):
    assert set(actual) == set(expected)
    for name in expected:
        assert [c for c, _, _ in actual[name]] == [c for c, _ in expected[name]], name
        for (_, got, _), (_, want) in zip(actual[name], expected[name]):
            assert got == pytest.approx(want, abs=tol), name


def test_yolo_and_voc_give_the_same_coco_boxes(tmp_path):
    write_yolo(str(tmp_path / "yolo"))
    write_voc(str(tmp_path / "voc"))
    yolo_summary = convert_yolo(str(tmp_path / "yolo"), str(tmp_path / "from_yolo.json"))
    voc_summary = convert_voc(str(tmp_path / "voc"), str(tmp_path / "from_voc.json"))

    yolo_coco, yolo_boxes = boxes_by_file(str(tmp_path / "from_yolo.json"))
    voc_coco, voc_boxes = boxes_by_file(str(tmp_path / "from_voc.json"))
    # file_name is relative to SRC/images, so the split sub-folder is part of it
    yolo_boxes = {name.removeprefix("train/"): boxes for name, boxes in yolo_boxes.items()}
    assert_boxes_close(yolo_boxes, expected_boxes(), 1e-6)
    assert_boxes_close(voc_boxes, expected_boxes(), 1.0)
    assert_boxes_close(voc_boxes, expected_boxes(), 1e-9)  # integer boxes survive VOC's 1-based rule exactly
    assert yolo_coco["categories"] == voc_coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    for coco in (yolo_coco, voc_coco):
        sizes = {i["file_name"].removeprefix("train/"): (i["width"], i["height"]) for i in coco["images"]}
        assert sizes == {name: (w, h) for name, (w, h, _) in KNOWN.items()}
        assert all(a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"])

    assert yolo_summary["images_dir"] == str(tmp_path / "yolo" / "images")
    assert yolo_summary["subfolders"] == ["train"]
    assert yolo_summary["images_without_labels"] == 1
    assert voc_summary["images_dir"] == str(tmp_path / "voc" / "JPEGImages")
    # difficult objects are kept as crowd (ignored by training and COCO eval), the others are not
    assert [t[2] for t in voc_boxes["two.png"]] == [1]
    assert voc_summary["difficult_as_crowd"] == 1
    assert all(a["iscrowd"] == 0 for a in yolo_coco["annotations"])
    # both outputs pass check against the images dir the converter names
    assert check_dataset(str(tmp_path / "from_yolo.json"), yolo_summary["images_dir"]).ok
    assert check_dataset(str(tmp_path / "from_voc.json"), voc_summary["images_dir"]).ok


def test_yolo_side_by_side_with_data_yaml(tmp_path):
    write_yolo(str(tmp_path), layout="side-by-side", classes_file="data.yaml")
    summary = convert_yolo(str(tmp_path), str(tmp_path / "out.json"))
    assert summary["layout"] == "side by side"
    assert summary["class_names_from"].endswith("data.yaml")
    _, boxes = boxes_by_file(str(tmp_path / "out.json"))
    assert_boxes_close(boxes, expected_boxes(), 1e-6)


def test_yolo_src_may_be_the_images_folder(tmp_path):
    write_yolo(str(tmp_path))
    summary = convert_yolo(str(tmp_path / "images" / "train"), str(tmp_path / "out.json"))
    assert summary["labels_dir"] == str(tmp_path / "labels" / "train")
    assert summary["class_names_from"] == str(tmp_path / "classes.txt")
    _, boxes = boxes_by_file(str(tmp_path / "out.json"))
    assert_boxes_close(boxes, expected_boxes(), 1e-6)


def test_yolo_errors_name_the_file_and_the_fix(tmp_path):
    write_yolo(str(tmp_path), classes_file=None)
    with pytest.raises(DatasetError, match="no class names .* --classes"):
        convert_yolo(str(tmp_path), str(tmp_path / "out.json"))
    with pytest.raises(DatasetError, match=r"one\.txt:2: class 1 is outside 0\.\.0"):
        convert_yolo(str(tmp_path), str(tmp_path / "out.json"), classes=["cat"])
    with open(tmp_path / "labels" / "train" / "two.txt", "w") as f:
        f.write("1 0.5 0.5\n")
    with pytest.raises(DatasetError, match=r"two\.txt:1: expected 'class cx cy w h'"):
        convert_yolo(str(tmp_path), str(tmp_path / "out.json"), classes=CLASSES)
    with pytest.raises(DatasetError, match="does not exist"):
        convert_yolo(str(tmp_path / "nope"), str(tmp_path / "out.json"))


def test_voc_explicit_classes_fix_the_order_and_reject_unknown_names(tmp_path):
    write_voc(str(tmp_path))
    convert_voc(str(tmp_path), str(tmp_path / "out.json"), classes=["dog", "cat", "bird"])
    coco, boxes = boxes_by_file(str(tmp_path / "out.json"))
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat", "bird"]
    assert_boxes_close(boxes, expected_boxes(), 1e-9)
    with pytest.raises(DatasetError, match=r"named \['dog'\]"):
        convert_voc(str(tmp_path), str(tmp_path / "out.json"), classes=["cat"])


def test_voc_image_set_converts_only_the_listed_ids(tmp_path, capsys):
    write_voc(str(tmp_path))
    os.makedirs(tmp_path / "ImageSets" / "Main")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("two\n\nempty  -1\n")
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("one\n")
    summary = convert_voc(str(tmp_path), str(tmp_path / "val.json"), image_set="val")
    coco, boxes = boxes_by_file(str(tmp_path / "val.json"))
    assert [i["file_name"] for i in coco["images"]] == ["two.png", "empty.png"]  # the list's order
    assert summary["images"] == 2 and boxes["two.png"] == [("dog", [12.0, 7.0, 25.0, 13.0], 1)]
    assert [c["name"] for c in coco["categories"]] == ["dog"]  # names seen in this set only

    out = str(tmp_path / "train.json")
    assert cli.main(["data", "convert", "voc", str(tmp_path), "--out", out, "--image-set", "train",
                     "--classes", "cat,dog"]) == 0
    assert f"wrote {out}: 1 images, 2 boxes, 2 categories" in capsys.readouterr().out

    assert cli.main(["data", "convert", "voc", str(tmp_path), "--out", out, "--image-set", "test"]) == 2
    err = capsys.readouterr().err
    assert "test.txt does not exist; the sets there are: train, val" in err and "Traceback" not in err
    (tmp_path / "ImageSets" / "Main" / "bad.txt").write_text("one\nthree\n")
    with pytest.raises(DatasetError, match="1 id\\(s\\) with no XML .* e.g. three"):
        convert_voc(str(tmp_path), out, image_set="bad")
    assert cli.main(["data", "convert", "yolo", str(tmp_path), "--out", out, "--image-set", "val"]) == 2
    assert "--image-set reads VOC's ImageSets/Main lists" in capsys.readouterr().err


def test_voc_without_size_reads_the_image_header(tmp_path):
    write_voc(str(tmp_path))
    xml_path = tmp_path / "Annotations" / "two.xml"
    xml_path.write_text(xml_path.read_text().replace("<width>100</width>", "<width>0</width>"))
    convert_voc(str(tmp_path), str(tmp_path / "out.json"))
    sizes = {i["file_name"]: (i["width"], i["height"]) for i in json.load(open(tmp_path / "out.json"))["images"]}
    assert sizes["two.png"] == (100, 50)
    os.remove(tmp_path / "JPEGImages" / "two.png")
    with pytest.raises(DatasetError, match=r"two\.xml has no usable <size>"):
        convert_voc(str(tmp_path), str(tmp_path / "out.json"))


def test_read_class_names(tmp_path):
    assert read_class_names("a, b,c") == ["a", "b", "c"]
    (tmp_path / "names.txt").write_text("x\n\ny\n")
    assert read_class_names(str(tmp_path / "names.txt")) == ["x", "y"]
    (tmp_path / "data.yaml").write_text("names: [p, q]\n")
    assert read_class_names(str(tmp_path / "data.yaml")) == ["p", "q"]
    with pytest.raises(DatasetError, match="neither an existing file"):
        read_class_names(str(tmp_path / "missing.txt"))


# ---------------------------------------------------------------------------------------------
# split

def make_split_input(path, num_images=20):
    images = [{"id": 100 + i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in range(num_images)]
    annotations = [ann(k + 1, 100 + (k % num_images), 1, [0, 0, 5, 5]) for k in range(3 * num_images)]
    write_json(path, {"info": {"name": "s"}, "images": images, "annotations": annotations,
                      "categories": [{"id": 1, "name": "x"}, {"id": 4, "name": "y"}]})


def test_split_is_deterministic_disjoint_and_complete(tmp_path):
    src = str(tmp_path / "all.json")
    make_split_input(src)
    a = split_dataset(src, 0.2, 7, str(tmp_path / "a" / "train.json"), str(tmp_path / "a" / "val.json"))
    b = split_dataset(src, 0.2, 7, str(tmp_path / "b" / "train.json"), str(tmp_path / "b" / "val.json"))
    for name in ("train.json", "val.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["val"]["images"] == 4 and a["train"]["images"] == 16 and b == {
        **a, "train": {**a["train"], "url": b["train"]["url"]}, "val": {**a["val"], "url": b["val"]["url"]}}

    full = json.load(open(src))
    train = json.load(open(tmp_path / "a" / "train.json"))
    val = json.load(open(tmp_path / "a" / "val.json"))
    train_ids = {i["id"] for i in train["images"]}
    val_ids = {i["id"] for i in val["images"]}
    assert not train_ids & val_ids
    assert train_ids | val_ids == {i["id"] for i in full["images"]}
    assert all(x["image_id"] in train_ids for x in train["annotations"])
    assert all(x["image_id"] in val_ids for x in val["annotations"])
    assert len(train["annotations"]) + len(val["annotations"]) == len(full["annotations"])
    assert train["categories"] == val["categories"] == full["categories"]
    assert train["info"] == val["info"] == full["info"]

    other = split_dataset(src, 0.2, 8, str(tmp_path / "c" / "train.json"), str(tmp_path / "c" / "val.json"))
    assert other["val"]["images"] == 4
    assert {i["id"] for i in json.load(open(tmp_path / "c" / "val.json"))["images"]} != val_ids


def test_split_does_not_depend_on_image_order(tmp_path):
    src = str(tmp_path / "all.json")
    make_split_input(src)
    data = json.load(open(src))
    data["images"].reverse()
    write_json(str(tmp_path / "reversed.json"), data)
    split_dataset(src, 0.3, 1, str(tmp_path / "t1.json"), str(tmp_path / "v1.json"))
    split_dataset(str(tmp_path / "reversed.json"), 0.3, 1, str(tmp_path / "t2.json"), str(tmp_path / "v2.json"))
    ids = [{i["id"] for i in json.load(open(tmp_path / f"v{k}.json"))["images"]} for k in (1, 2)]
    assert ids[0] == ids[1] and len(ids[0]) == 6


def test_split_on_memory_urls():
    from orchestrator import storage

    root = "memory://datatools-split"
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(10)]
    storage.write_text(f"{root}/all.json", json.dumps({"images": images, "annotations": [],
                                                       "categories": [{"id": 1, "name": "x"}]}))
    summary = split_dataset(f"{root}/all.json", 0.5, 0, f"{root}/out/train.json", f"{root}/out/val.json")
    assert summary["train"]["images"] == summary["val"]["images"] == 5
    assert len(json.loads(storage.read_text(f"{root}/out/val.json"))["images"]) == 5


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_split_rejects_fractions_outside_0_1(tmp_path, fraction):
    src = str(tmp_path / "all.json")
    make_split_input(src)
    with pytest.raises(DatasetError, match="not a fraction"):
        split_dataset(src, fraction, 0, str(tmp_path / "t.json"), str(tmp_path / "v.json"))


def test_split_refuses_to_overwrite_its_input(tmp_path):
    src = str(tmp_path / "train.json")
    make_split_input(src)
    with pytest.raises(DatasetError, match="would overwrite its input"):
        split_dataset(src, 0.2, 0, src, str(tmp_path / "val.json"))


# ---------------------------------------------------------------------------------------------
# CLI: exit codes 0 clean, 1 broken, 2 user error

@pytest.fixture
def clean_dataset(tmp_path):
    write_png(str(tmp_path / "img" / "a.png"), 40, 30)
    path = str(tmp_path / "clean.json")
    write_json(path, {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
                      "annotations": [ann(1, 1, 1, [1, 1, 10, 10])],
                      "categories": [{"id": 1, "name": "thing"}]})
    return path, str(tmp_path / "img")


def test_cli_check_exit_codes(tmp_path, clean_dataset, capsys):
    path, images = clean_dataset
    assert cli.main(["data", "check", path, "--images", images]) == 0
    assert "OK: nothing would break training" in capsys.readouterr().out

    broken, broken_images = make_defect_dataset(str(tmp_path / "broken"))
    assert cli.main(["data", "check", broken, "--images", broken_images]) == 1
    assert "FAILED" in capsys.readouterr().out

    assert cli.main(["data", "check", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_check_warnings_alone_exit_0(tmp_path, clean_dataset, capsys):
    path, images = clean_dataset
    data = json.load(open(path))
    data["annotations"].append(ann(2, 1, 1, [35, 25, 10, 10]))  # past the border: clipped by the job
    data["images"].append({"id": 2, "file_name": "a.png", "width": 40, "height": 30})  # background
    write_json(path, data)
    assert cli.main(["data", "check", path, "--images", images, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and not report["errors"]
    assert {w["kind"] for w in report["warnings"]} == {"box_outside_image", "image_without_annotations"}


def test_cli_check_fix(tmp_path, capsys):
    broken, images = make_defect_dataset(str(tmp_path))
    before = open(broken, "rb").read()
    out = str(tmp_path / "fixed.json")
    assert cli.main(["data", "check", broken, "--images", images, "--fix", out]) == 0
    text = capsys.readouterr().out
    assert "FAILED" in text and f"wrote {out}" in text and "cleaned copy: OK" in text
    assert open(broken, "rb").read() == before
    assert cli.main(["data", "check", out, "--images", images]) == 0
    assert cli.main(["data", "check", broken, "--fix", broken]) == 2
    assert "would overwrite its input" in capsys.readouterr().err
    assert open(broken, "rb").read() == before


def test_cli_convert_and_split(tmp_path, capsys, monkeypatch):
    write_yolo(str(tmp_path / "yolo"), classes_file=None)
    out = str(tmp_path / "coco" / "all.json")
    assert cli.main(["data", "convert", "yolo", str(tmp_path / "yolo"), "--out", out]) == 2
    assert "--classes" in capsys.readouterr().err
    assert cli.main(["data", "convert", "yolo", str(tmp_path / "yolo"), "--out", out, "--classes", "cat,dog"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 3 images, 3 boxes, 2 categories" in printed
    assert f"relative to {tmp_path / 'yolo' / 'images'}:" in printed

    write_voc(str(tmp_path / "voc"))
    assert cli.main(["data", "convert", "voc", str(tmp_path / "voc"), "--out", str(tmp_path / "voc.json")]) == 0
    assert "1 difficult objects kept as iscrowd=1" in capsys.readouterr().out

    assert cli.main(["data", "split", out, "--val", "0.34", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    train, val = str(tmp_path / "coco" / "train.json"), str(tmp_path / "coco" / "val.json")
    assert f"wrote {train}: 2 images" in printed and f"wrote {val}: 1 images" in printed
    # splitting train.json again next to itself would overwrite it: a user error
    assert cli.main(["data", "split", train]) == 2
    assert "--out-dir" not in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "split", "coco/train.json", "--out-dir", "parts"]) == 0
    assert os.path.exists(tmp_path / "parts" / "train.json") and os.path.exists(tmp_path / "parts" / "val.json")


def test_cli_synth_then_check(tmp_path, capsys):
    pytest.importorskip("orchestrator.synth")
    out = str(tmp_path / "synth")
    assert cli.main(["data", "synth", out, "--train", "3", "--val", "2", "--size", "48", "--seed", "1"]) == 0
    capsys.readouterr()
    for split_name, count in (("train", 3), ("val", 2)):
        ann_file = os.path.join(out, f"{split_name}.json")
        assert len(json.load(open(ann_file))["images"]) == count
        assert cli.main(["data", "check", ann_file, "--images", os.path.join(out, split_name)]) == 0
    with pytest.raises(SystemExit):
        cli.main(["data", "synth", out, "--train", "0"])


def test_data_cli_is_torch_free_and_fast():
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = ("import sys, orchestrator.cli_data, orchestrator.datatools; "
            "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)

    # CPU seconds of the child (user + sys), best of three: wall time on a shared 2-core machine
    # measures the neighbours; the CPU time is what `orch data check --help` itself costs.
    best_cpu_s = best_wall_s = float("inf")
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "data", "check", "--help"],
                                capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        best_wall_s = min(best_wall_s, time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best_cpu_s = min(best_cpu_s, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        assert result.returncode == 0, result.stderr
        assert "--images" in result.stdout and "--fix" in result.stdout
    assert best_cpu_s < 0.5, f"orch data check --help used {best_cpu_s:.2f} s of CPU ({best_wall_s:.2f} s wall)"


# --- bad input (issue 11): impossible boxes are refused, outputs never overwrite inputs -----------
@pytest.mark.parametrize("line, match", [
    ("0 32 32 16 16", r"normalised to \[0, 1\]"),
    ("0 0.5 0.5 -0.2 0.1", "width is -0.2"),
    ("0 0.5 0.5 0.2 0", "height is 0"),
    ("0 nan 0.5 0.2 0.2", "NaN or infinite"),
    ("0 0.5 inf 0.2 0.2", "NaN or infinite"),
    ("0 10 10 40 10 40 40", r"normalised to \[0, 1\]"),  # a polygon in pixels
])
def test_yolo_refuses_impossible_boxes_naming_file_and_line(tmp_path, line, match):
    write_yolo(str(tmp_path))
    with open(tmp_path / "labels" / "train" / "one.txt", "w") as f:
        f.write(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(DatasetError, match=rf"one\.txt:2: .*{match}"):
        convert_yolo(str(tmp_path), str(tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("box, match", [
    ((40, 10, 10, 40), "xmax 10 < xmin 40"), ((10, 50, 40, 20), "ymax 20 < ymin 50"),
    (("nan", 10, 40, 40), "not a finite number"), ((10, 10, "inf", 40), "not a finite number"),
])
def test_voc_refuses_impossible_boxes(tmp_path, box, match):
    write_voc(str(tmp_path))
    xmin, ymin, xmax, ymax = box
    with open(tmp_path / "Annotations" / "one.xml", "w") as f:
        f.write(f"<annotation><filename>one.png</filename><size><width>64</width><height>64</height></size>"
                f"<object><name>cat</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
                f"<ymax>{ymax}</ymax></bndbox></object></annotation>")
    with pytest.raises(DatasetError, match=rf"one\.xml: .*{match}"):
        convert_voc(str(tmp_path), str(tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists()


def test_converters_refuse_an_out_that_is_a_file_of_the_dataset_but_rewrite_their_own_json(tmp_path):
    write_yolo(str(tmp_path))
    label = tmp_path / "labels" / "train" / "one.txt"
    before = label.read_bytes()
    with pytest.raises(DatasetError, match="would overwrite its input"):
        convert_yolo(str(tmp_path), str(label))
    with pytest.raises(DatasetError, match="would overwrite its input"):
        convert_yolo(str(tmp_path), str(tmp_path / "classes.txt"))
    assert label.read_bytes() == before
    for _ in range(2):  # an earlier output in the dataset folder is not an input
        convert_yolo(str(tmp_path), str(tmp_path / "coco.json"))


def test_json_output_never_holds_nan(tmp_path):
    from orchestrator.datatools._common import write_json as write_coco

    with pytest.raises(DatasetError, match="NaN or infinite"):
        write_coco(str(tmp_path / "out.json"), {"annotations": [{"bbox": [float("nan"), 0, 1, 1]}]})
    assert not (tmp_path / "out.json").exists()


def test_synth_refuses_a_folder_that_holds_a_dataset(tmp_path, capsys):
    from orchestrator.synth import make_synthetic_dataset

    make_synthetic_dataset(str(tmp_path), num_train=1, num_val=1, image_size=32)
    before = (tmp_path / "train.json").read_bytes()
    assert cli.main(["data", "synth", str(tmp_path), "--train", "2", "--val", "1", "--size", "32"]) == 2
    assert "already holds train.json, val.json, train, val" in capsys.readouterr().err
    assert (tmp_path / "train.json").read_bytes() == before
