"""jobs.evaluate: COCO numbers, backends that agree, result conversion, gathering across ranks."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jobs import data, evaluate
from orchestrator.synth import make_synthetic_dataset

torch.set_num_threads(1)
needs_faster = pytest.mark.skipif(not evaluate.faster_available(), reason="faster-coco-eval not installed")


def _gt(sparse: bool = True) -> dict:
    """Three sizes of boxes on 6 images; Roboflow-style unused category 0 and sparse ids."""
    cats = [{"id": 0, "name": "objects"}, {"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}] if sparse else \
        [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    used = [c["id"] for c in cats][-2:]
    rnd = random.Random(0)
    images, anns = [], []
    for image_id in range(1, 7):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        for k in range(rnd.randint(2, 5)):
            side = rnd.choice([20, 60, 150])  # small, medium and large objects
            x, y = rnd.uniform(0, 640 - side), rnd.uniform(0, 480 - side)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": rnd.choice(used),
                         "bbox": [x, y, side, side * rnd.uniform(0.7, 1.3)], "iscrowd": 0,
                         "area": side * side})
    anns[0]["iscrowd"] = 1  # a crowd box: matches are ignored, never counted as misses
    return {"images": images, "annotations": anns, "categories": cats}


def _noisy_detections(gt: dict, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    cat_ids = [c["id"] for c in gt["categories"]][-2:]
    dets = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        if rnd.random() < 0.85:
            cat = ann["category_id"] if rnd.random() < 0.85 else rnd.choice(cat_ids)
            dets.append({"image_id": ann["image_id"], "category_id": cat, "score": rnd.random(),
                         "bbox": [x + rnd.gauss(0, w * 0.08), y + rnd.gauss(0, h * 0.08),
                                  w * rnd.uniform(0.8, 1.2), h * rnd.uniform(0.8, 1.2)]})
        for _ in range(rnd.randint(0, 2)):  # false positives
            dets.append({"image_id": ann["image_id"], "category_id": rnd.choice(cat_ids), "score": rnd.random() * 0.6,
                         "bbox": [rnd.uniform(0, 500), rnd.uniform(0, 350), rnd.uniform(10, 140), rnd.uniform(10, 140)]})
    return dets


@pytest.mark.parametrize("backend", ["pycocotools", pytest.param("faster", marks=needs_faster)])
def test_ground_truth_as_predictions_scores_ap_one(backend):
    gt = _gt()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"] if not a["iscrowd"]]
    result = evaluate.coco_evaluate(gt, dets, [0, 3, 17], backend=backend)
    stats = result["stats"]
    assert list(stats) == list(evaluate.STAT_NAMES)
    for name in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l",
                 "bbox_AR_100"):
        assert stats[name] == pytest.approx(1.0), name
    names = [name for name, _ in result["per_class"]]
    assert names == ["objects", "cat", "dog"]
    aps = dict(result["per_class"])
    assert aps["cat"] == pytest.approx(1.0) and aps["dog"] == pytest.approx(1.0)
    assert aps["objects"] != aps["objects"]  # no ground truth for the unused id 0: nan, as mmdetection shows
    assert gt["annotations"][1].get("ignore") is None  # the caller's dict was not written into


@needs_faster
def test_faster_coco_eval_agrees_with_pycocotools():
    gt = _gt()
    dets = _noisy_detections(gt)
    ref = evaluate.coco_evaluate(gt, dets, backend="pycocotools")
    fast = evaluate.coco_evaluate(gt, dets, backend="faster")
    assert 0.1 < ref["stats"]["bbox_mAP"] < 0.9  # a non-trivial case
    assert ref["stats"]["bbox_mAP_s"] > 0 and ref["stats"]["bbox_mAP_l"] > 0
    for name in evaluate.STAT_NAMES:
        assert fast["stats"][name] == pytest.approx(ref["stats"][name], abs=1e-6), name
    for (name_a, ap_a), (name_b, ap_b) in zip(ref["per_class"], fast["per_class"]):
        assert name_a == name_b
        assert (ap_a != ap_a and ap_b != ap_b) or ap_a == pytest.approx(ap_b, abs=1e-6)
    assert evaluate.coco_evaluate(gt, dets)["backend"] == "faster"  # auto picks it since they agree


def test_summary_text_and_per_class_table():
    gt = _gt(sparse=False)
    result = evaluate.coco_evaluate(gt, _noisy_detections(gt), backend="pycocotools")
    lines = result["summary"].splitlines()
    assert lines[0] == (" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = "
                        f"{result['stats']['bbox_mAP']:0.3f}")
    assert lines[6].startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]")
    assert lines[12] == lines[14] == lines[-1] and set(lines[12]) == {"+", "-"}
    assert lines[13].startswith("| category | AP ") and "| cat " in lines[15] and "| dog " in lines[15]


def test_empty_detections_give_zeros():
    result = evaluate.coco_evaluate(_gt(), [], backend="auto")
    assert set(result["stats"].values()) == {0.0}
    assert [ap for _, ap in result["per_class"]] == [0.0, 0.0, 0.0]
    assert "= 0.000" in result["summary"]
    with pytest.raises(ValueError, match="valid backends"):
        evaluate.coco_evaluate(_gt(), [], backend="detectron")


def test_predictions_to_coco_uses_xywh_and_original_ids():
    outputs = [{"boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 5.0]]),
                "labels": torch.tensor([2, 9]), "scores": torch.tensor([0.9, 0.5])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}]
    results = evaluate.predictions_to_coco(outputs, [42, 43], {1: 0, 2: 17})
    assert results == [{"image_id": 42, "category_id": 17, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.9}]


def test_gather_is_a_noop_without_distributed():
    dets = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    assert evaluate.gather_detections(dets) == dets


def _gather_worker(rank: int, world: int, store: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        local = [{"image_id": rank + 1, "category_id": 1, "bbox": [rank, 0, 1, 1], "score": 0.5}]
        if rank == 1:  # image 1 also on rank 1, as a padded sampler would give: dropped
            local.append({"image_id": 1, "category_id": 1, "bbox": [9, 9, 1, 1], "score": 0.5})
        queue.put((rank, evaluate.gather_detections(local)))
    finally:
        dist.destroy_process_group()


def test_gather_across_two_gloo_ranks_deduplicates_by_image(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    store = os.path.join(str(tmp_path), "store")
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, store, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
                {"image_id": 2, "category_id": 1, "bbox": [1, 0, 1, 1], "score": 0.5}]
    assert results[0] == results[1] == expected


class _Oracle(torch.nn.Module):
    """Predicts the ground truth of each image (found by its pixels' checksum): AP must be 1."""

    def __init__(self, dataset):
        super().__init__()
        self.answers = {}
        for index in range(len(dataset)):
            image, target = dataset[index]
            self.answers[float(image.sum())] = target

    def forward(self, images):
        assert not self.training
        outputs = []
        for image in images:
            target = self.answers[float(image.sum())]
            outputs.append({"boxes": target["boxes"], "labels": target["labels"],
                            "scores": torch.ones(len(target["labels"]))})
        return outputs


def test_evaluate_model_through_the_val_loader_maps_labels_back(tmp_path):
    synth = make_synthetic_dataset(str(tmp_path), num_train=0, num_val=6, image_size=64, seed=2,
                                   category_ids=(0, 5, 9))
    config = {"seed": 0, "data": {"val": synth["val"], "batch_per_gpu": 2, "num_workers": 0}}
    loader = data.build_val_loader(config, {"batch_per_gpu": 2}, rank=0, world_size=1)
    model = _Oracle(loader.dataset).train()
    result = evaluate.evaluate_model(model, loader, loader.dataset.coco, loader.dataset.label_to_cat_id, "cpu")
    assert model.training  # put back as it was
    assert result["stats"]["bbox_mAP"] == pytest.approx(1.0)
    assert result["num_detections"] == synth["val"]["num_annotations"]
    assert json.loads(json.dumps(result["stats"]))  # plain floats, ready for metrics.jsonl
