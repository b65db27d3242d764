"""orch eval / predict / export on tiny checkpoints of the two mobilenet detectors.

The checkpoints are built here: a fresh model whose BatchNorm statistics are measured on the
training images. A fresh model's are (0, 1), which makes every position look alike and every
score tie; measured ones give distinct scores, so torch and onnxruntime can be compared
detection by detection.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from jobs import models
from jobs.checkpoint import CheckpointManager, serialize
from jobs.evaluate import STAT_NAMES, coco_evaluate
from orchestrator import cli, runs, storage
from orchestrator.config import load_config
from orchestrator.synth import make_synthetic_dataset

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SSDLITE = "ssdlite320_mobilenet_v3_large"
FRCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"
CATEGORY_IDS = (3, 7, 11)
SIZE = 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    # 96x96 and 96x64 images: export is traced at another size, so H and W must really be free
    return make_synthetic_dataset(root, num_train=6, num_val=4, image_size=SIZE, category_ids=CATEGORY_IDS,
                                  aspect_ratios=(1.0, 1.5), seed=1)


def _measure_batchnorm(model: torch.nn.Module, img_dir: str) -> None:
    from jobs.predict import list_images, read_image, to_tensor

    images = [to_tensor(read_image(storage.join(img_dir, n))) for n in list_images(img_dir)]
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches seen
    model.train()
    with torch.no_grad():
        batch, _ = model.transform(images)
        model.backbone(batch.tensors)
    model.eval()


def _make_run(dataset, work_dir: str, name: str) -> dict:
    overrides = [f"work_dir={work_dir}", f"model.name={name}", f"model.min_size={SIZE}", f"model.max_size={SIZE}",
                 f"data.train.ann_file={dataset['train']['ann_file']}",
                 f"data.train.img_dir={dataset['train']['img_dir']}",
                 f"data.val.ann_file={dataset['val']['ann_file']}", f"data.val.img_dir={dataset['val']['img_dir']}"]
    config = load_config(os.path.join(REPO, "configs", "demo.yml"), overrides).data
    doc = runs.create_run_dir(work_dir, f"run-{name.split('_')[0]}", runs.build_plan(config), config)
    torch.manual_seed(0)
    model = models.build_model(config["model"], len(CATEGORY_IDS) + 1)
    _measure_batchnorm(model, dataset["train"]["img_dir"])
    with CheckpointManager(doc["run_dir"], async_save=False) as manager:
        manager.save({"model": model.state_dict()}, 0, best=True)
    return {"run_dir": doc["run_dir"], "checkpoint": storage.join(doc["run_dir"], "checkpoints", "best.pth"),
            "model": model}


@pytest.fixture(scope="module")
def ssd_run(dataset, tmp_path_factory):
    return _make_run(dataset, str(tmp_path_factory.mktemp("runs")), SSDLITE)


@pytest.fixture(scope="module")
def frcnn_run(dataset, tmp_path_factory):
    return _make_run(dataset, str(tmp_path_factory.mktemp("runs")), FRCNN)


def orch(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_module_imports_no_torch():
    code = ("import sys, orchestrator.cli as c, orchestrator.cli_model; c._build_parser(); "
            "bad = [m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------- eval

def test_eval_of_a_run_prints_the_coco_summary_and_the_per_class_table(ssd_run, dataset, capsys):
    code, out, err = orch(capsys, "eval", ssd_run["run_dir"], "--batch", 3, "--workers", 0)
    assert code == 0, err
    assert err == ""  # categories came from the training file: no note
    summary = [line for line in out.splitlines() if re.match(r" Average (Precision|Recall) ", line)]
    assert len(summary) == 12
    values = [float(line.rsplit("= ", 1)[1]) for line in summary]
    assert all(v == -1.0 or 0.0 <= v <= 1.0 for v in values)  # -1: no ground truth of that size
    assert values[8] > 0  # AR@100: a few of 300 random boxes per image do hit a shape
    assert "best.pth" in out and f"{dataset['train']['ann_file']}" in out
    table = out[out.index("| category"):]
    assert all(name in table for name in ("circle", "square", "triangle"))
    assert f"on {dataset['val']['num_images']} images" in out


def test_eval_json_agrees_with_scoring_the_predict_output(ssd_run, dataset, tmp_path, capsys):
    code, out, err = orch(capsys, "eval", ssd_run["checkpoint"], "--json", "--workers", 0)
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == SSDLITE and result["num_classes"] == 4
    assert result["category_ids"] == list(CATEGORY_IDS) and result["num_images"] == 4
    assert list(result["stats"]) == list(STAT_NAMES) and result["num_detections"] > 0

    preds = str(tmp_path / "preds.json")
    code, _, err = orch(capsys, "predict", ssd_run["run_dir"], dataset["val"]["img_dir"], "--out", preds,
                        "--score-thr", 0, "--ann", dataset["val"]["ann_file"])
    assert code == 0, err
    detections = json.loads(storage.read_text(preds))
    gt = json.loads(storage.read_text(dataset["val"]["ann_file"]))
    assert len(detections) == result["num_detections"]
    rescored = coco_evaluate(gt, detections, CATEGORY_IDS)["stats"]
    for key in STAT_NAMES:
        assert rescored[key] == pytest.approx(result["stats"][key], abs=1e-12), key


def test_eval_outside_a_run_dir_takes_model_flags_and_says_where_the_ids_come_from(ssd_run, dataset, tmp_path,
                                                                                    capsys):
    loose = str(tmp_path / "weights.pth")
    storage.write_bytes(loose, storage.read_bytes(ssd_run["checkpoint"]))  # no marker, no run dir
    val = dataset["val"]
    code, out, err = orch(capsys, "eval", loose, "--json", "--workers", 0)
    assert code == 2 and "--model" in err and loose in err

    code, out, err = orch(capsys, "eval", loose, "--model", SSDLITE, "--min-size", SIZE, "--data", val["ann_file"],
                          "--images", val["img_dir"], "--json", "--workers", 0)
    assert code == 0, err
    standalone = json.loads(out)
    assert standalone["categories_from"] == val["ann_file"]
    assert any("not from the training annotation file" in note for note in standalone["notes"])
    code, out, _ = orch(capsys, "eval", ssd_run["run_dir"], "--json", "--workers", 0)
    assert json.loads(out)["stats"] == standalone["stats"]


def test_user_errors_name_the_file_and_the_fix(ssd_run, dataset, tmp_path, capsys):
    missing = str(tmp_path / "nope.pth")
    code, _, err = orch(capsys, "eval", missing, "--model", SSDLITE)
    assert code == 2 and missing in err and "does not exist" in err and err.count("\n") == 1

    no_model = str(tmp_path / "optimizer_only.pth")
    storage.write_bytes(no_model, serialize({"optimizer": {"lr": 0.1}, "iteration": 3}))
    code, _, err = orch(capsys, "predict", no_model, dataset["val"]["img_dir"], "--out", str(tmp_path / "p.json"),
                        "--model", SSDLITE)
    assert code == 2 and no_model in err and "no 'model'" in err and err.count("\n") == 1

    code, _, err = orch(capsys, "eval", ssd_run["checkpoint"], "--model", FRCNN, "--workers", 0)
    assert code == 2 and "does not fit fasterrcnn_mobilenet_v3_large_320_fpn" in err and "--model" in err

    two = str(tmp_path / "two_classes.json")
    coco = json.loads(storage.read_text(dataset["train"]["ann_file"]))
    storage.write_text(two, json.dumps({**coco, "categories": coco["categories"][:2]}))
    code, _, err = orch(capsys, "predict", ssd_run["run_dir"], dataset["val"]["img_dir"], "--out",
                        str(tmp_path / "p.json"), "--categories", two)
    assert code == 2 and "trained for 3 classes" in err and "--categories" in err

    code, _, err = orch(capsys, "predict", ssd_run["run_dir"], str(tmp_path / "no_such_dir"), "--out",
                        str(tmp_path / "p.json"))
    assert code == 2 and "no_such_dir" in err


# ---------------------------------------------------------------- predict

def test_predict_writes_coco_results_with_the_original_ids_and_draws_them(ssd_run, dataset, tmp_path, capsys):
    preds, drawn = str(tmp_path / "out" / "preds.json"), str(tmp_path / "drawn")
    val_dir = dataset["val"]["img_dir"]
    code, out, err = orch(capsys, "predict", ssd_run["run_dir"], val_dir, "--out", preds, "--score-thr", 0.2,
                          "--batch", 3, "--draw", drawn)
    assert code == 0, err
    detections = json.loads(storage.read_text(preds))
    names = sorted(os.listdir(val_dir))
    assert detections and f"{len(detections)} detections" in out
    assert {d["category_id"] for d in detections} <= set(CATEGORY_IDS)
    assert all(d["score"] >= 0.2 for d in detections)
    for det in detections:
        assert det["image_id"] == names.index(det["file_name"]) + 1  # ids follow the sorted names
        x, y, w, h = det["bbox"]
        width, height = Image.open(os.path.join(val_dir, det["file_name"])).size
        assert w > 0 and h > 0 and x >= -0.01 and y >= -0.01 and x + w <= width + 0.01 and y + h <= height + 0.01

    from pycocotools.coco import COCO  # the results file is what COCO tools read

    gt = COCO()
    gt.dataset = {"images": [{"id": k + 1, "file_name": n} for k, n in enumerate(names)], "annotations": [],
                  "categories": [{"id": c} for c in CATEGORY_IDS]}
    gt.createIndex()
    assert len(gt.loadRes(preds).getAnnIds()) == len(detections)

    assert sorted(os.listdir(drawn)) == names
    for name in {d["file_name"] for d in detections}:
        original = np.asarray(Image.open(os.path.join(val_dir, name)).convert("RGB"), dtype=np.int16)
        picture = np.asarray(Image.open(os.path.join(drawn, name)).convert("RGB"), dtype=np.int16)
        assert picture.shape == original.shape
        assert (np.abs(picture - original).max(axis=2) > 60).mean() > 0.01  # boxes and labels, not jpeg noise


# ---------------------------------------------------------------- export

def _max_box_diff(out: str) -> float:
    match = re.search(r"check OK: .* max box difference ([0-9.e+-]+) px", out)
    assert match, out
    return float(match.group(1))


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["batch1", "dynamic"])
def test_export_ssdlite_matches_torch(ssd_run, tmp_path, capsys, dynamic_batch):
    out = str(tmp_path / "ssd.onnx")
    flags = ["--dynamic-batch"] if dynamic_batch else []
    code, text, err = orch(capsys, "export", ssd_run["run_dir"], "--format", "onnx", "--check", "--out", out, *flags)
    assert code == 0, text + err
    assert "onnx.checker: OK" in text
    diff = _max_box_diff(text)
    print(f"ssdlite export --check ({'dynamic batch' if dynamic_batch else 'batch 1'}): max box diff {diff} px")
    assert diff < 1e-3
    _assert_onnx_interface(out, dynamic_batch)


def test_export_fasterrcnn_with_a_dynamic_batch_matches_torch(frcnn_run, dataset, tmp_path, capsys):
    out = str(tmp_path / "frcnn.onnx")
    code, text, err = orch(capsys, "export", frcnn_run["checkpoint"], "--check", "--dynamic-batch", "--out", out,
                           "--images", dataset["val"]["img_dir"])
    assert code == 0, text + err
    diff = _max_box_diff(text)
    print(f"fasterrcnn export --check (dynamic batch): max box diff {diff} px")
    assert diff < 5e-3  # RoIAlign's bilinear sampling passes on float rounding a little more than SSD's heads
    _assert_onnx_interface(out, True)


def _assert_onnx_interface(path: str, dynamic_batch: bool) -> None:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["category_ids"]) == list(CATEGORY_IDS)
    assert json.loads(meta["class_names"]) == ["circle", "square", "triangle"]
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "batch_index"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert (batch_dim.dim_param == "batch") if dynamic_batch else (batch_dim.dim_value == 1)


def test_export_check_fails_when_onnxruntime_disagrees(ssd_run, dataset, tmp_path, capsys, monkeypatch):
    from jobs import export

    real = export.check_onnx

    def with_a_shifted_model(payload, loaded, *args, **kwargs):
        with torch.no_grad():  # torch now sees other weights than the exported graph
            loaded.model.head.regression_head.module_list[0][1].bias.add_(1.0)
        return real(payload, loaded, *args, **kwargs)

    monkeypatch.setattr(export, "check_onnx", with_a_shifted_model)
    code, text, err = orch(capsys, "export", ssd_run["checkpoint"], "--check", "--check-images", 2,
                           "--out", str(tmp_path / "x.onnx"))
    assert code == 1 and "check MISMATCH" in text


def test_predict_reads_and_writes_any_storage_url(ssd_run, dataset, capsys):
    val_dir = dataset["val"]["img_dir"]
    for name in sorted(os.listdir(val_dir))[:2]:
        storage.write_bytes(f"memory://model-cli/val/{name}", storage.read_bytes(os.path.join(val_dir, name)))
    code, out, err = orch(capsys, "predict", ssd_run["run_dir"], "memory://model-cli/val", "--out",
                          "memory://model-cli/out/preds.json", "--score-thr", 0.2, "--draw", "memory://model-cli/drawn")
    assert code == 0, err
    detections = json.loads(storage.read_text("memory://model-cli/out/preds.json"))
    assert {d["file_name"] for d in detections} <= {"000000.jpg", "000001.jpg"} and detections
    assert storage.listdir("memory://model-cli/drawn") == ["000000.jpg", "000001.jpg"]


def test_matching_ignores_the_order_among_equal_scores_and_tolerates_only_the_cut():
    from jobs.export import match_detections

    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 45], [1, 2, 3, 4]], np.float32)
    a = {"boxes": boxes, "scores": np.array([0.9, 0.5, 0.5, 0.2], np.float32), "labels": np.array([1, 2, 2, 1])}
    order = [0, 2, 1]  # the two 0.5s swapped; a's 0.2 is missing though b goes down to 0.5: a real difference
    b = {"boxes": boxes[order] + 1e-4, "scores": a["scores"][order], "labels": a["labels"][order]}
    pairs, rest_a, rest_b, tolerated = match_detections(a, b, score_tol=1e-3, score_floor=0.05)
    assert sorted(pairs) == [(0, 0), (1, 2), (2, 1)] and rest_a == [3] and rest_b == [] and tolerated == 0
    b_cut = {k: v[:2] for k, v in b.items()}  # now 0.5 is b's lowest: a's other 0.5 sits at the cut
    pairs, rest_a, _, tolerated = match_detections(a, b_cut, score_tol=1e-3, score_floor=0.05)
    assert len(pairs) == 2 and len(rest_a) == 2 and tolerated == 1  # the 0.5 is tolerated, the 0.2 is not
    b_low = {"boxes": boxes[[0, 1, 2, 3]], "scores": np.array([0.9, 0.5, 0.5, 0.0501], np.float32),
             "labels": np.array([1, 2, 2, 1])}
    a_low = {k: v[:3] for k, v in b_low.items()}
    _, _, rest_b, tolerated = match_detections(a_low, b_low, score_tol=1e-3, score_floor=0.05)
    assert rest_b == [3] and tolerated == 1  # at the score threshold: one side may keep it, the other not
