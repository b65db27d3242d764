"""jobs.data: category mapping, clipping counts, deterministic batches and augmentation."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from jobs import data
from jobs.data import CocoDetection, DistributedGroupedBatchSampler
from orchestrator import cocofile
from orchestrator.synth import make_synthetic_dataset

torch.set_num_threads(1)

AUGMENT = {"hflip": 0.5, "resize": {"min_size": [80, 96, 112], "max_size": 128},
           "photometric": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05}}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    return make_synthetic_dataset(root, num_train=8, num_val=5, image_size=96, seed=0, aspect_ratios=(1.0, 0.75))


def _config(synth, **data_overrides):
    cfg = {"seed": 5, "data": {"train": dict(synth["train"]), "val": dict(synth["val"]), "batch_per_gpu": 2,
                               "num_workers": 0, "filter_empty": True, "aspect_ratio_grouping": True,
                               "augment": AUGMENT}}
    cfg["data"].update(data_overrides)
    return cfg


# ---------------------------------------------------------------- categories and boxes

def _rewrite(synth, tmp_path, edit) -> str:
    coco = json.loads(open(synth["train"]["ann_file"]).read())
    edit(coco)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(coco))
    return str(path)


def test_roboflow_and_sparse_category_ids_round_trip(synth, tmp_path):
    """Roboflow exports carry an unused category 0; others use sparse ids: labels are 1..K and map back."""
    remap = {1: 3, 2: 7, 3: 11}

    def edit(coco):
        coco["categories"] = [{"id": 0, "name": "shapes"}] + [
            dict(c, id=remap[c["id"]]) for c in coco["categories"]]
        for ann in coco["annotations"]:
            ann["category_id"] = remap[ann["category_id"]]

    ann_file = _rewrite(synth, tmp_path, edit)
    ds = CocoDetection(ann_file, synth["train"]["img_dir"], train=False)
    assert ds.label_to_cat_id == {1: 0, 2: 3, 3: 7, 4: 11}
    assert ds.cat_id_to_label == {0: 1, 3: 2, 7: 3, 11: 4}
    coco = cocofile.load_coco(ann_file)
    for index in range(len(ds)):
        _, target = ds[index]
        expected = sorted(a["category_id"] for a in coco["annotations"] if a["image_id"] == target["image_id"])
        assert target["labels"].dtype == torch.int64
        assert sorted(ds.label_to_cat_id[int(lab)] for lab in target["labels"]) == expected
        assert 1 not in target["labels"].tolist()  # the unused id 0 never appears as a label


def test_unknown_category_id_names_the_file(synth, tmp_path):
    ann_file = _rewrite(synth, tmp_path, lambda coco: coco["annotations"][0].update(category_id=99))
    with pytest.raises(cocofile.AnnotationError, match="category_id 99"):
        CocoDetection(ann_file, synth["train"]["img_dir"], train=True)


def test_out_of_image_boxes_clipped_degenerate_dropped_crowd_ignored(synth, tmp_path, caplog):
    extra = []

    def edit(coco):
        img = coco["images"][0]
        w, h = img["width"], img["height"]
        base = {"image_id": img["id"], "category_id": 1, "iscrowd": 0, "area": 100.0}
        extra.extend([
            dict(base, id=9001, bbox=[-10.0, -5.0, 30.0, 25.0]),     # clipped to [0, 0, 20, 20]
            dict(base, id=9002, bbox=[w - 8.0, 10.0, 50.0, 20.0]),   # clipped on the right
            dict(base, id=9003, bbox=[w + 5.0, 10.0, 20.0, 20.0]),   # fully outside: dropped
            dict(base, id=9004, bbox=[10.0, 10.0, 0.0, 20.0]),       # zero width: dropped
            dict(base, id=9005, bbox=[10.0, 10.0, 20.0, 20.0], iscrowd=1),  # crowd: ignored
        ])
        coco["annotations"].extend(extra)
        # an image whose only box is degenerate: not trained on, still evaluated
        coco["images"].append({"id": 777, "file_name": img["file_name"], "width": w, "height": h})
        coco["annotations"].append(dict(base, id=9006, image_id=777, bbox=[0.0, 0.0, 0.5, 30.0]))

    ann_file = _rewrite(synth, tmp_path, edit)
    with caplog.at_level(logging.INFO, logger="jobs.data"):
        ds = CocoDetection(ann_file, synth["train"]["img_dir"], train=True, augment=None)
    assert ds.counts["clipped"] == 2
    assert ds.counts["dropped"] == 2  # image 777's box is not counted: the image is not trained on
    assert ds.counts["crowd"] == 1
    assert ds.counts["empty_images_skipped"] == 1
    assert "2 clipped" in caplog.text and "2 degenerate dropped" in caplog.text and "1 crowd" in caplog.text
    assert 777 not in ds.image_ids
    assert ds.image_ids == cocofile.train_image_ids(cocofile.load_coco(ann_file), filter_empty=True)
    _, target = ds[ds.image_ids.index(extra[0]["image_id"])]
    boxes = target["boxes"]
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
    assert [0.0, 0.0, 20.0, 20.0] in boxes.tolist()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 2] > boxes[:, 0]).all()
    val = CocoDetection(ann_file, synth["train"]["img_dir"], train=False)
    assert 777 in val.image_ids and len(val.boxes[val.image_ids.index(777)]) == 0
    assert val.counts["dropped"] == 3
    unfiltered = CocoDetection(ann_file, synth["train"]["img_dir"], train=True, filter_empty=False)
    assert 777 in unfiltered.image_ids


def test_augment_config_is_validated():
    with pytest.raises(ValueError, match="valid keys"):
        data.validate_augment({"hflip": 0.5, "mosaic": True})
    with pytest.raises(ValueError, match="probability"):
        data.validate_augment({"hflip": 2})
    assert data.validate_augment(None)["hflip"] == 0.0


# ---------------------------------------------------------------- batch sampler

GROUPS = [0] * 15 + [1] * 8  # 23 images, both orientations


def _rank_batches(epoch, rank, world=2, batch=3, start_step=0, groups=GROUPS, seed=1, grouping=True):
    sampler = DistributedGroupedBatchSampler(groups, batch, world, rank, seed, epoch=epoch, start_step=start_step,
                                             group_by_aspect=grouping)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    return batches


@pytest.mark.parametrize("groups,grouping", [(GROUPS, True), (GROUPS, False), ([0] * 12, True),
                                             ([1, 0] * 7 + [1], True), ([0, 1, 0], True)])
def test_batches_full_disjoint_per_step_and_iters_per_epoch(groups, grouping):
    world, batch = 2, 3
    iters = math.ceil(len(groups) / (world * batch))
    ranks = [_rank_batches(0, r, world, batch, groups=groups, grouping=grouping) for r in range(world)]
    assert all(len(b) == iters for b in ranks)
    seen = set()
    for step in range(iters):
        items = [pair for r in range(world) for pair in ranks[r][step]]
        assert all(len(ranks[r][step]) == batch for r in range(world))
        assert all(epoch == 0 for _, epoch in items)
        indices = [i for i, _ in items]
        if len(groups) >= world * batch:
            assert len(set(indices)) == len(indices), f"step {step} shows an image to two ranks"
        seen.update(indices)
    assert seen == set(range(len(groups)))  # every image at least once per epoch


def test_batches_are_aspect_grouped_except_at_most_one_mixed():
    sampler = DistributedGroupedBatchSampler(GROUPS, 3, 2, 0, seed=1)
    mixed = [b for b in sampler.global_batches(0) if len({GROUPS[i] for i in b}) > 1]
    assert len(mixed) <= 1
    for epoch in range(5):
        batches = sampler.global_batches(epoch)
        assert sum(len({GROUPS[i] for i in b}) > 1 for b in batches) <= 1


def test_same_epoch_same_batches_other_epoch_differs_and_resume_yields_the_tail():
    full = _rank_batches(epoch=3, rank=1)
    assert full == _rank_batches(epoch=3, rank=1)
    assert full != _rank_batches(epoch=4, rank=1)
    assert full != _rank_batches(epoch=3, rank=1, seed=2)
    for k in range(len(full) + 1):
        assert _rank_batches(epoch=3, rank=1, start_step=k) == full[k:]
    sampler = DistributedGroupedBatchSampler(GROUPS, 3, 2, 1, seed=1, epoch=3, start_step=2)
    assert len(sampler) == len(full) - 2
    sampler.set_epoch(4)  # the next epoch starts at step 0
    assert list(sampler) == _rank_batches(epoch=4, rank=1)


def test_sampler_does_not_touch_the_global_rng():
    state = torch.get_rng_state()
    _rank_batches(epoch=0, rank=0)
    assert torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------- augmentation determinism

def _collect(loader):
    return [(img, tgt) for images, targets in loader for img, tgt in zip(images, targets)]


def test_augmentation_is_bitwise_identical_across_worker_processes(synth):
    plan = {"batch_per_gpu": 2}
    single = _collect(data.build_train_loader(_config(synth, num_workers=0), plan, rank=0, world_size=2, epoch=1))
    state = torch.get_rng_state()
    workers = _collect(data.build_train_loader(_config(synth, num_workers=2), plan, rank=0, world_size=2, epoch=1))
    assert torch.equal(state, torch.get_rng_state())  # building/iterating drew nothing from the global RNG
    assert len(single) == len(workers) == 2 * math.ceil(8 / 4)
    for (img_a, tgt_a), (img_b, tgt_b) in zip(single, workers):
        assert img_a.dtype == torch.float32 and img_a.shape[0] == 3
        assert torch.equal(img_a, img_b)
        assert torch.equal(tgt_a["boxes"], tgt_b["boxes"]) and torch.equal(tgt_a["labels"], tgt_b["labels"])
        assert tgt_a["image_id"] == tgt_b["image_id"]
    # the augmentation is real: other epochs (same images) give other pixels and other sizes
    ds = data.build_train_dataset(_config(synth))
    plain = CocoDetection(synth["train"]["ann_file"], synth["train"]["img_dir"], train=True, augment=None)
    differs = sizes = 0
    for index in range(len(ds)):
        a, b = ds[(index, 1)][0], ds[(index, 2)][0]
        assert torch.equal(a, ds[(index, 1)][0])
        differs += a.shape != b.shape or not torch.equal(a, b)
        sizes += a.shape != plain[index][0].shape
    assert differs == len(ds) and sizes > 0


def test_hflip_moves_boxes_with_the_pixels(synth):
    ds = CocoDetection(synth["train"]["ann_file"], synth["train"]["img_dir"], train=True,
                       augment={"hflip": 1.0, "resize": None, "photometric": None})
    plain = CocoDetection(synth["train"]["ann_file"], synth["train"]["img_dir"], train=True, augment=None)
    img, tgt = ds[0]
    ref_img, ref_tgt = plain[0]
    width = img.shape[-1]
    assert torch.equal(img, ref_img.flip(-1))
    expected = ref_tgt["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([width, 0, width, 0])
    assert torch.allclose(tgt["boxes"], expected)


# ---------------------------------------------------------------- zoom-out, IoU-crop, stop_epoch

def _boxes(rows, size):
    from torchvision import tv_tensors
    return tv_tensors.BoundingBoxes(torch.tensor(rows, dtype=torch.float32), format="XYXY", canvas_size=size)


def test_zoom_out_and_iou_crop_same_seed_same_result_and_valid_boxes():
    from torchvision import tv_tensors
    augment = data.validate_augment({"hflip": 0.0, "zoom_out": {"p": 1.0}, "iou_crop": {"p": 1.0}})
    assert augment["zoom_out"] == {"p": 1.0, "max_scale": 4.0} and augment["iou_crop"] == {"p": 1.0}
    image = tv_tensors.Image(torch.randint(1, 256, (3, 24, 32), dtype=torch.uint8,
                                           generator=torch.Generator().manual_seed(0)))
    rows = [[2, 2, 12, 10], [10, 8, 30, 22], [0, 0, 32, 24]]
    shapes, cropped = set(), 0
    for seed in range(30):
        runs = [data.zoom_and_crop(image, _boxes(rows, (24, 32)), augment, torch.Generator().manual_seed(seed))
                for _ in range(2)]
        (img_a, box_a, keep_a), (img_b, box_b, keep_b) = runs
        assert torch.equal(img_a, img_b) and torch.equal(box_a, box_b) and torch.equal(keep_a, keep_b)
        height, width = img_a.shape[-2:]
        plain = box_a.as_subclass(torch.Tensor)
        assert len(plain) == int(keep_a.sum()) >= 1  # the crop keeps at least one box centre
        assert (plain[:, 0] >= 0).all() and (plain[:, 1] >= 0).all()
        assert (plain[:, 2] <= width).all() and (plain[:, 3] <= height).all()
        assert ((plain[:, 2:] - plain[:, :2]) >= 1).all()
        assert tuple(box_a.canvas_size) == (height, width)
        shapes.add((height, width))
        cropped += bool((~keep_a).any())
    assert len(shapes) > 10 and cropped > 0  # sizes vary with the seed; some crops drop boxes
    # zoom-out alone: the original pixels sit unchanged inside a black canvas, boxes moved with them
    zoom = data.validate_augment({"hflip": 0.0, "zoom_out": {"p": 1.0, "max_scale": 3}})
    img, box, keep = data.zoom_and_crop(image, _boxes(rows, (24, 32)), zoom, torch.Generator().manual_seed(3))
    assert keep.all() and img.shape[-1] > 32
    left, top = int(box[2][0]), int(box[2][1])
    assert torch.equal(img[:, top:top + 24, left:left + 32], image)
    assert int(img.sum()) == int(image.sum())
    assert torch.allclose(box.as_subclass(torch.Tensor) - torch.tensor([left, top, left, top]),
                          torch.tensor(rows, dtype=torch.float32))


def test_iou_crop_drops_labels_with_their_boxes_and_stop_epoch_switches_at_n(synth):
    ann, img_dir = synth["train"]["ann_file"], synth["train"]["img_dir"]
    augment = {"hflip": 0.5, "photometric": {"brightness": 0.5}, "zoom_out": {"p": 1.0},
               "iou_crop": {"p": 1.0}, "stop_epoch": 3}
    ds = CocoDetection(ann, img_dir, train=True, augment=augment, seed=5)
    same_flip = CocoDetection(ann, img_dir, train=True, augment={"hflip": 0.5}, seed=5)
    for index in range(len(ds)):
        for epoch in (0, 2):
            img, tgt = ds[(index, epoch)]
            assert len(tgt["boxes"]) == len(tgt["labels"]) >= 1
            again = ds[(index, epoch)]
            assert torch.equal(img, again[0]) and torch.equal(tgt["boxes"], again[1]["boxes"])
        for epoch in (3, 4):  # from stop_epoch on only the flip (and resize) remain, with the same draws
            img, tgt = ds[(index, epoch)]
            ref_img, ref_tgt = same_flip[(index, epoch)]
            assert torch.equal(img, ref_img) and torch.equal(tgt["boxes"], ref_tgt["boxes"])
            assert torch.equal(tgt["labels"], ref_tgt["labels"])
    assert data.augment_for_epoch(ds.augment, 2)["zoom_out"] is not None
    assert data.augment_for_epoch(ds.augment, 3) == {**ds.augment, "photometric": None, "zoom_out": None,
                                                      "iou_crop": None}
    with pytest.raises(ValueError, match="valid keys"):
        data.validate_augment({"zoom_out": {"scale": 2}})


def test_multiscale_size_sequence_is_the_same_on_every_rank_and_after_a_resume():
    import subprocess
    import sys

    augment = {"multiscale": [480, 512, 544, 576], "stop_epoch": 3}
    ipe, seed = 5, 7
    state = torch.get_rng_state()
    run = [data.multiscale_size(augment, seed, it, ipe) for it in range(20)]
    assert torch.equal(state, torch.get_rng_state())  # drawn from its own generator, not the global RNG
    assert set(run[:15]) <= {480, 512, 544, 576} and len(set(run[:15])) > 1
    assert run[15:] == [None] * 5  # epoch 3 = stop_epoch: the model's own size again
    # another rank is another process, with its own RNG history: it draws the same sizes
    code = ("import torch, json; torch.manual_seed(123); torch.rand(9); from jobs import data; "
            f"print(json.dumps([data.multiscale_size({augment!r}, {seed}, it, {ipe}) for it in range(20)]))")
    other_rank = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(other_rank) == run
    # a resume at step k draws what the uninterrupted run drew
    for k in (3, 7):
        torch.rand(5)
        assert [data.multiscale_size(augment, seed, it, ipe) for it in range(k, 20)] == run[k:]
    assert data.multiscale_size({"multiscale": None}, seed, 0, ipe) is None
    assert data.multiscale_size({"multiscale": [480]}, seed, 99, ipe) == 480
    assert [data.multiscale_size({"multiscale": [480, 800]}, s, 0, ipe) for s in range(20)] != [480] * 20


# ---------------------------------------------------------------- loaders

def test_train_loader_checks_the_plan(synth):
    cfg = _config(synth)
    loader = data.build_train_loader(cfg, {"batch_per_gpu": 2, "iters_per_epoch": 2, "train_images": 8}, 0, 2)
    assert len(loader) == 2
    with pytest.raises(ValueError, match="iterations per epoch"):
        data.build_train_loader(cfg, {"batch_per_gpu": 2, "iters_per_epoch": 4}, 0, 1 + 2)
    with pytest.raises(ValueError, match="training images"):
        data.build_train_loader(cfg, {"batch_per_gpu": 2, "train_images": 9}, 0, 2)
    resumed = data.build_train_loader(cfg, {"batch_per_gpu": 2}, 0, 2, epoch=0, start_step=1)
    assert len(resumed) == 1


def test_val_loader_shards_are_disjoint_and_complete(synth):
    cfg = _config(synth, val_batch_per_gpu=2)
    ids = []
    for rank in range(2):
        loader = data.build_val_loader(cfg, {"batch_per_gpu": 2}, rank, 2)
        ids.append([t["image_id"] for _, targets in loader for t in targets])
        assert loader.dataset.coco is not None
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(img["id"] for img in cocofile.load_coco(synth["val"]["ann_file"])["images"])
