"""The full rtdetr_v2_r18vd (not a tiny one) fine-tunes onto 3 classes from an 80-class release, an
official-format ``{"model": state_dict}`` .pth (the fixture's tensor names and shapes) and a Hugging Face
folder, through the job's own Trainer: the init report skips exactly the class-dependent tensors, nothing
is missing, and one training step gives a finite loss."""
from __future__ import annotations

import json
import logging
import os
import re

import pytest

from jobutil import make_dataset, make_run

pytestmark = pytest.mark.e2e

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures",
                       "rtdetrv2_official_state_dict_keys.json")
NAME = "rtdetr_v2_r18vd"
# Written independently of jobs/detr_weights.py: the class-dependent tensors of the model (HF names),
# without the top-level class_embed alias tied to model.decoder.class_embed.
CLASS_DEPENDENT = re.compile(r"^model\.(enc_score_head|decoder\.class_embed\.\d+|denoising_class_embed)\.")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=2, num_val=1, size=128)


def _official_release(path):
    with open(FIXTURE) as f:
        shapes = json.load(f)["models"]["rtdetrv2_r18vd_120e_coco"]
    gen = torch.Generator().manual_seed(0)
    # random values at a small scale (positive running variances), so the full model's outputs stay finite
    state = {k: (torch.rand(s, generator=gen) + 0.5 if k.endswith("running_var") else
                 torch.randn(s, generator=gen) * 0.02) if s else torch.tensor(7) for k, s in shapes.items()}
    torch.save({"model": state}, path)
    return str(path)


def _hf_folder(path):
    from jobs.detr_models import build_detr

    torch.manual_seed(0)
    build_detr(NAME, 80).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("form", ["official_pth", "hf_folder"])
def test_full_r18vd_fine_tunes_from_an_80_class_release_onto_3_classes(form, data_root, tmp_path, caplog):
    if form == "official_pth" and not os.path.exists(FIXTURE):
        pytest.skip("the official tensor-name fixture is not next to the repo")
    from jobs.distributed import DistInfo
    from jobs.engine import Trainer
    from orchestrator import runs

    init = _official_release(tmp_path / "rtdetrv2_r18vd.pth") if form == "official_pth" \
        else _hf_folder(tmp_path / "hf")
    run_dir = make_run(str(tmp_path / "runs"), "ft", data_root, gpus=1, extra=[
        f"model.name={NAME}", "model.min_size=128", "model.max_size=128", f"model.init_checkpoint={init}",
        "data.num_workers=0", "data.batch_per_gpu=2", "optimizer.name=adamw", "optimizer.base_lr=0.0001",
        "optimizer.clip_grad_norm=0.1", "schedule.max_iters=1", "schedule.eval_every_iters=100"])
    job_log = logging.getLogger("orch.job")   # the run's log does not propagate to the root logger
    job_log.addHandler(caplog.handler)
    job_log.setLevel(logging.INFO)
    trainer = Trainer(runs.read_plan(run_dir), DistInfo(0, 1, 0, torch.device("cpu"), None))
    reports = []
    load_init = trainer.adapter.load_init
    trainer.adapter.load_init = lambda model, url: reports.append(load_init(model, url)) or reports[-1]
    try:
        trainer.resume_or_load()
        own = trainer.model.state_dict()
        assert trainer.train() == "COMPLETED"
    finally:
        trainer.close()
        job_log.removeHandler(caplog.handler)
    (report,) = reports
    expected = {k for k in own if CLASS_DEPENDENT.match(k)}
    # enc_score_head, each of the 3 decoder layers' score heads (weight + bias), the denoising embedding
    assert len(expected) == 9
    assert {entry[0] for entry in report["skipped"]} == expected
    assert report["missing"] == [] and report["unexpected"] == []
    line = next(r.getMessage() for r in caplog.records if "fine-tuning from" in r.getMessage())
    assert "missing (fresh init) none" in line and "enc_score_head" in line and "denoising_class_embed" in line
    assert own["model.enc_score_head.weight"].shape[0] == 3
    losses = [r["loss"] for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if r["type"] == "train"]
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses[0])), losses
