"""orchestrator.synth: deterministic, exact boxes, any storage URL, torch-free."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
from PIL import Image

from orchestrator import cocofile, storage
from orchestrator.synth import make_synthetic_dataset


def _memory_url() -> str:
    return f"memory://synth-{uuid.uuid4().hex[:8]}"


def _all_files(root: str) -> dict[str, bytes]:
    files = {name: storage.read_bytes(storage.join(root, name)) for name in ("train.json", "val.json")}
    for split in ("train", "val"):
        for name in storage.listdir(storage.join(root, split)):
            files[f"{split}/{name}"] = storage.read_bytes(storage.join(root, split, name))
    return files


def test_same_seed_same_bytes_other_seed_differs():
    a, b, c = _memory_url(), _memory_url(), _memory_url()
    make_synthetic_dataset(a, num_train=6, num_val=3, image_size=96, seed=7)
    make_synthetic_dataset(b, num_train=6, num_val=3, image_size=96, seed=7)
    make_synthetic_dataset(c, num_train=6, num_val=3, image_size=96, seed=8)
    files_a, files_b, files_c = _all_files(a), _all_files(b), _all_files(c)
    assert len(files_a) == 2 + 6 + 3
    assert files_a == files_b
    assert files_a["train/000000.jpg"] != files_c["train/000000.jpg"]


def test_coco_layout_and_sparse_category_ids(tmp_path):
    out = make_synthetic_dataset(str(tmp_path), num_train=10, num_val=4, image_size=128, seed=1,
                                 classes=("circle", "square", "triangle"), category_ids=(3, 7, 11))
    assert out["num_classes"] == 3
    train = cocofile.load_coco(out["train"]["ann_file"])
    assert cocofile.category_ids(train) == [3, 7, 11]
    assert [c["name"] for c in train["categories"]] == ["circle", "square", "triangle"]
    assert len(train["images"]) == 10 and len(cocofile.load_coco(out["val"]["ann_file"])["images"]) == 4
    per_image = {img["id"]: 0 for img in train["images"]}
    for ann in train["annotations"]:
        per_image[ann["image_id"]] += 1
        assert ann["category_id"] in (3, 7, 11) and ann["iscrowd"] == 0
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]
    assert all(1 <= n <= 4 for n in per_image.values())
    # every image is trainable: no shape is empty or clipped away
    assert cocofile.train_image_ids(train, filter_empty=True) == sorted(per_image)
    for img in train["images"]:
        assert (tmp_path / "train" / img["file_name"]).exists()


def test_boxes_are_the_exact_pixel_extent_of_each_shape(tmp_path):
    """Lossless PNG: the shape's colour touches all four box edges and never the ring just outside."""
    out = make_synthetic_dataset(str(tmp_path), num_train=12, num_val=0, image_size=112, seed=3, image_format="png",
                                 classes=("circle", "square", "triangle", "diamond", "cross"))
    coco = cocofile.load_coco(out["train"]["ann_file"])
    images = {img["id"]: img for img in coco["images"]}
    assert len(coco["annotations"]) >= 12
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        pixels = np.asarray(Image.open(tmp_path / "train" / img["file_name"]).convert("RGB")).astype(int)
        x, y, w, h = (int(v) for v in ann["bbox"])
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
        inside = pixels[y:y + h, x:x + w]
        # the shape's colour: the most common colour inside the box (background is noise)
        colours, counts = np.unique(inside.reshape(-1, 3), axis=0, return_counts=True)
        colour = colours[counts.argmax()]
        is_shape = np.all(pixels == colour, axis=-1)
        assert is_shape[y, x:x + w].any() and is_shape[y + h - 1, x:x + w].any()
        assert is_shape[y:y + h, x].any() and is_shape[y:y + h, x + w - 1].any()
        ring = np.zeros_like(is_shape)
        ring[max(0, y - 1):y + h + 1, max(0, x - 1):x + w + 1] = True
        ring[y:y + h, x:x + w] = False
        assert not is_shape[ring].any()


def test_jpeg_images_match_json_sizes_and_aspect_ratios():
    root = _memory_url()
    out = make_synthetic_dataset(root, num_train=8, num_val=0, image_size=96, seed=0, aspect_ratios=(1.0, 0.75, 1.5))
    coco = json.loads(storage.read_text(out["train"]["ann_file"]))
    shapes = set()
    for img in coco["images"]:
        with Image.open(io.BytesIO(storage.read_bytes(storage.join(out["train"]["img_dir"], img["file_name"])))) as im:
            assert im.size == (img["width"], img["height"])
            assert max(im.size) == 96
            shapes.add(im.size)
    assert len(shapes) > 1


def test_rejects_unknown_classes_and_bad_ids(tmp_path):
    with pytest.raises(ValueError, match="valid classes"):
        make_synthetic_dataset(str(tmp_path), num_train=1, num_val=0, classes=("hexagon",))
    with pytest.raises(ValueError, match="distinct ids"):
        make_synthetic_dataset(str(tmp_path), num_train=1, num_val=0, category_ids=(1, 1, 2))


def test_module_is_torch_free():
    code = "import sys, orchestrator.synth; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
