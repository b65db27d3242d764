"""orch predict / export with ``--model NAME`` on a release outside a run dir: a Hugging Face
folder (save_pretrained) and an official RT-DETR .pth (built from the fixture's tensor names)."""
from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from jobs import detr_adapter  # noqa: E402
from jobs.detr_models import build_detr  # noqa: E402
from jobs.predict import list_images, read_image, to_tensor  # noqa: E402
from orchestrator import cli  # noqa: E402
from orchestrator.synth import make_synthetic_dataset  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures",
                       "rtdetrv2_official_state_dict_keys.json")
NAME, SIZE = "rtdetr_v2_r18vd", 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("shapes")), num_train=2, num_val=2, image_size=SIZE,
                                  category_ids=(3, 7, 11), seed=1)


def orch(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _direct_top_scores(model, img_dir: str) -> list[float]:
    adapter = detr_adapter.DetrAdapter({"name": NAME, "min_size": SIZE})
    with torch.no_grad():
        outputs = adapter.predict(model.eval(), [to_tensor(read_image(os.path.join(img_dir, n)))
                                                 for n in list_images(img_dir)])
    return [float(o["scores"].max()) for o in outputs]


def _predicted_top_scores(path: str) -> list[float]:
    with open(path) as f:
        results = json.load(f)
    by_image: dict[int, float] = {}
    for r in results:
        by_image[r["image_id"]] = max(by_image.get(r["image_id"], 0.0), r["score"])
    return [by_image[k] for k in sorted(by_image)], {r["category_id"] for r in results}


def test_predict_eval_and_export_take_a_hugging_face_folder(dataset, tmp_path, capsys):
    torch.manual_seed(0)
    model = build_detr(NAME, 3)
    folder = tmp_path / "hf-release"
    model.save_pretrained(folder)
    val = dataset["val"]["img_dir"]
    out = tmp_path / "preds.json"
    code, text, err = orch(capsys, "predict", folder, val, "--model", NAME, "--categories",
                           dataset["train"]["ann_file"], "--min-size", SIZE, "--score-thr", 0, "--out", out)
    assert code == 0, text + err
    scores, categories = _predicted_top_scores(str(out))
    assert scores == pytest.approx(_direct_top_scores(model, val), abs=1e-5)
    assert categories <= {3, 7, 11}
    code, text, err = orch(capsys, "eval", folder, "--model", NAME, "--data", dataset["val"]["ann_file"], "--images",
                           val, "--min-size", SIZE, "--workers", 0)
    assert code == 0, text + err
    assert sum(line.startswith(" Average ") for line in text.splitlines()) == 12
    code, text, err = orch(capsys, "export", folder, "--model", NAME, "--categories", dataset["train"]["ann_file"],
                           "--min-size", SIZE, "--out", tmp_path / "hf.onnx")
    assert code == 0, text + err
    assert f"images [B,3,{SIZE},{SIZE}]" in text and os.path.getsize(tmp_path / "hf.onnx") > 1e6


@pytest.mark.skipif(not os.path.exists(FIXTURE), reason="the official tensor-name fixture is not next to the repo")
def test_predict_takes_an_official_release_pth(dataset, tmp_path, capsys):
    with open(FIXTURE) as f:
        shapes = json.load(f)["models"]["rtdetrv2_r18vd_120e_coco"]
    gen = torch.Generator().manual_seed(0)
    # small seeded weights (unit BatchNorm variances), so that the outputs stay finite
    state = {k: (torch.ones(s) if k.endswith("running_var") else (torch.rand(s, generator=gen) - 0.5) * 0.1)
             if s else torch.tensor(7) for k, s in shapes.items()}
    release = tmp_path / "rtdetrv2_r18vd_120e_coco.pth"
    torch.save({"ema": {"module": state, "updates": 1000}, "last_epoch": 119}, release)
    coco80 = tmp_path / "coco80.json"  # the release's 80 classes
    coco80.write_text(json.dumps({"images": [], "annotations": [],
                                  "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(80)]}))
    out = tmp_path / "preds.json"
    code, text, err = orch(capsys, "predict", release, dataset["val"]["img_dir"], "--model", NAME, "--categories",
                           coco80, "--min-size", SIZE, "--score-thr", 0, "--out", out)
    assert code == 0, text + err
    assert "80 classes + background" in text
    model = build_detr(NAME, 80)
    from jobs.detr_weights import load_init_weights

    load_init_weights(model, str(release))
    scores, _ = _predicted_top_scores(str(out))
    assert scores == pytest.approx(_direct_top_scores(model, dataset["val"]["img_dir"]), abs=1e-5)
