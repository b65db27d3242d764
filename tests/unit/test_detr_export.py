"""orch export --format onnx --check for RT-DETRv2 and D-FINE (tiny, 128-px inputs).

The graph takes the official deploy inputs (images resized to the model's square size, plus
each image's original (w, h)) for any batch size and gives labels, boxes and scores per image;
``--check`` runs onnxruntime on real images, all in one call and the first alone, against orch's
own predict path, under the tolerances it prints.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

import yaml  # noqa: E402

from jobs import models  # noqa: E402
from jobs.checkpoint import CheckpointManager  # noqa: E402
from orchestrator import cli, runs, storage  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.detr_table import tiny_overrides  # noqa: E402
from orchestrator.synth import make_synthetic_dataset  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CATEGORY_IDS = (3, 7, 11)
SIZE = 128
NAMES = ("rtdetr_v2_r18vd", "dfine_s")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 128x128 and 192x128 images: each image's own (w, h) scales its boxes back
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("shapes")), num_train=2, num_val=3, image_size=SIZE,
                                  category_ids=CATEGORY_IDS, aspect_ratios=(1.0, 1.5), seed=1)


def make_run(dataset, work_dir: str, name: str) -> dict:
    kwargs = yaml.safe_dump(tiny_overrides(name), default_flow_style=True).strip()
    overrides = [f"work_dir={work_dir}", f"model.name={name}", f"model.min_size={SIZE}", f"model.max_size={SIZE}",
                 f"model.kwargs={kwargs}",
                 f"data.train.ann_file={dataset['train']['ann_file']}", f"data.train.img_dir={dataset['train']['img_dir']}",
                 f"data.val.ann_file={dataset['val']['ann_file']}", f"data.val.img_dir={dataset['val']['img_dir']}"]
    config = load_config(os.path.join(REPO, "configs", "demo.yml"), overrides).data
    doc = runs.create_run_dir(work_dir, f"run-{name}", runs.build_plan(config), config)
    torch.manual_seed(0)
    model = models.build_model(config["model"], len(CATEGORY_IDS) + 1)
    _measure_batchnorm(model, config["model"], dataset["train"]["img_dir"])
    with CheckpointManager(doc["run_dir"], async_save=False) as manager:
        manager.save({"model": model.state_dict()}, 0, best=True)
    return {"run_dir": doc["run_dir"], "checkpoint": storage.join(doc["run_dir"], "checkpoints", "best.pth")}


def _measure_batchnorm(model, model_cfg: dict, img_dir: str) -> None:
    """A fresh model's BatchNorm statistics (0, 1) make every position alike: the encoder's scores
    tie and which of the tied proposals top-k picks is arbitrary. Measured ones separate them."""
    from jobs.predict import list_images, read_image, to_tensor

    images = [to_tensor(read_image(storage.join(img_dir, n))) for n in list_images(img_dir)]
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches seen
            module.train()
    with torch.no_grad():
        model(**models.build_adapter(model_cfg).inputs(images))
    model.eval()


def orch(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _differences(text: str) -> tuple[float, float, float, float]:
    m = re.search(r"max box difference (\S+) px \(tolerance (\S+)\), max score difference (\S+) \(tolerance (\S+)\)",
                  text)
    assert m, text
    return tuple(float(v) for v in m.groups())  # type: ignore[return-value]


@pytest.mark.parametrize("name", NAMES)
def test_export_check_matches_torch_for_any_batch_size(name, dataset, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    run = make_run(dataset, str(tmp_path / "runs"), name)
    out = str(tmp_path / f"{name}.onnx")
    code, text, err = orch(capsys, "export", run["run_dir"], "--format", "onnx", "--check", "--check-images", 3,
                           "--out", out)
    assert code == 0, text + err
    assert "onnx.checker: OK" in text and "check OK" in text
    assert text.count("(batch of 3)") == 3 and text.count("(batch of 1)") == 1
    box_diff, box_tol, score_diff, score_tol = _differences(text)
    print(f"{name} export --check: max box diff {box_diff} px (tol {box_tol}), max score diff {score_diff} "
          f"(tol {score_tol})")
    assert box_diff <= box_tol == 0.05 and score_diff <= score_tol == 1e-3
    assert "300 matched" not in text and "20 matched" in text  # every query's detection, one per query

    proto = onnx.load(out)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["category_ids"]) == list(CATEGORY_IDS) and meta["model"] == name
    assert [i.name for i in proto.graph.input] == ["images", "orig_target_sizes"]
    assert [o.name for o in proto.graph.output] == ["labels", "boxes", "scores"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        images = np.random.default_rng(batch).random((batch, 3, SIZE, SIZE), dtype=np.float32)
        labels, boxes, scores = session.run(None, {"images": images,
                                                   "orig_target_sizes": np.array([[640, 480]] * batch)})
        assert labels.shape == scores.shape == (batch, 20) and boxes.shape == (batch, 20, 4)
        assert labels.min() >= 1 and labels.max() <= len(CATEGORY_IDS)


def test_export_check_fails_when_onnxruntime_disagrees(dataset, tmp_path, capsys, monkeypatch):
    from jobs import detr_export

    run = make_run(dataset, str(tmp_path / "runs"), "rtdetr_v2_r18vd")
    real = detr_export.check_onnx

    def with_shifted_boxes(payload, loaded, *args, **kwargs):
        with torch.no_grad():  # torch now sees other weights than the exported graph
            loaded.model.model.decoder.bbox_embed[-1].layers[-1].bias.add_(0.5)
        return real(payload, loaded, *args, **kwargs)

    monkeypatch.setattr(detr_export, "check_onnx", with_shifted_boxes)
    code, text, err = orch(capsys, "export", run["checkpoint"], "--check", "--check-images", 2,
                           "--out", str(tmp_path / "x.onnx"))
    assert code == 1 and "check MISMATCH" in text


def test_export_refuses_a_padded_detr_family_with_the_fix(dataset, tmp_path, capsys):
    run = make_run(dataset, str(tmp_path / "runs"), "deformable_detr_r50")
    code, text, err = orch(capsys, "export", run["checkpoint"], "--out", str(tmp_path / "d.onnx"))
    assert code != 0 and "supports RT-DETRv2 and D-FINE" in err and "orch predict" in err
