"""The transformer detectors in orch's own loop: build by name, the adapter's pixels, targets and
detections, one training step, EMA, eval, and init weights that are never confused with resume."""
from __future__ import annotations

import json
import logging
import os

import pytest
import yaml

from jobutil import make_dataset, make_run

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from jobs import detr_adapter, models  # noqa: E402
from jobs.ema import ModelEMA  # noqa: E402
from orchestrator.detr_table import tiny_overrides  # noqa: E402


def tiny_cfg(name: str = "rtdetr_v2_r18vd", **extra):
    return {"name": name, "kwargs": tiny_overrides(name), "min_size": 128, "max_size": 128, **extra}


def batch():
    images = [torch.rand(3, 96, 120), torch.rand(3, 100, 90)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0], [20.0, 20.0, 80.0, 90.0]]),
                "labels": torch.tensor([2, 3])}]
    return images, targets


@pytest.mark.parametrize("name", ["rtdetr_v2_r18vd", "dfine_s", "detr_r50"])
def test_build_by_name_takes_the_class_count_without_background(name):
    model = models.build_model(tiny_cfg(name), 4)   # 3 dataset classes + torchvision's background
    assert type(model).__name__.endswith("ForObjectDetection")
    assert model.config.num_labels == 3
    assert isinstance(models.build_adapter(tiny_cfg(name)), detr_adapter.DetrAdapter)
    assert isinstance(models.build_adapter({"name": "ssdlite320_mobilenet_v3_large"}), models.TorchvisionAdapter)


def test_square_families_only_resize_and_rescale():
    images, _ = batch()
    rule = detr_adapter.FAMILIES["rt_detr_v2"]
    pre = detr_adapter.preprocess(images, rule, 64, None)
    assert pre.pixel_values.shape == (2, 3, 64, 64) and pre.pixel_mask is None
    assert 0 <= float(pre.pixel_values.min()) and float(pre.pixel_values.max()) <= 1
    flat = torch.full((3, 32, 48), 0.25)
    assert torch.allclose(detr_adapter.preprocess([flat], rule, 64, None).pixel_values, torch.tensor(0.25))


def test_detr_family_keeps_the_aspect_ratio_normalises_and_masks_the_padding():
    rule = detr_adapter.FAMILIES["detr"]
    images = [torch.full((3, 50, 100), 0.485), torch.full((3, 100, 50), 0.485)]
    pre = detr_adapter.preprocess(images, rule, 80, 120)
    # 50x100 -> short side 80 would make the long side 160 > 120: capped at 60x120
    assert pre.pixel_values.shape == (2, 3, 120, 120)
    assert pre.pixel_mask[0].sum() == 60 * 120 and pre.pixel_mask[1].sum() == 120 * 60
    assert abs(float(pre.pixel_values[0, 0, :60, :].mean())) < 1e-5   # the mean maps to 0
    assert float(pre.pixel_values[0, :, 60:, :].abs().max()) == 0       # padding


def test_targets_and_detections_round_trip_to_the_original_pixels():
    images, targets = batch()
    sizes = [tuple(img.shape[-2:]) for img in images]
    hf = detr_adapter.to_hf_targets(targets, sizes)
    assert hf[1]["class_labels"].tolist() == [1, 2]   # 0-based
    cx, cy, w, h = hf[0]["boxes"][0].tolist()
    assert (cx, cy, w, h) == pytest.approx((30 / 120, 36 / 96, 40 / 120, 48 / 96))
    # a model that predicts exactly the targets: the post-processing gives back boxes and labels
    num_classes = 3
    for family in ("rt_detr_v2", "detr"):
        rule = detr_adapter.FAMILIES[family]
        logits = torch.full((2, 2, num_classes + (rule.scoring == "softmax")), -10.0)
        boxes = torch.zeros(2, 2, 4)
        for b, target in enumerate(hf):
            for q, (label, box) in enumerate(zip(target["class_labels"], target["boxes"])):
                logits[b, q, label] = 10.0
                boxes[b, q] = box
        out = detr_adapter.postprocess(logits, boxes, sizes, rule)
        for b, target in enumerate(targets):
            confident = out[b]["scores"] > 0.5
            assert sorted(out[b]["labels"][confident].tolist()) == sorted(target["labels"].tolist())
            got = torch.tensor(sorted(out[b]["boxes"][confident].tolist()))
            assert torch.allclose(got, torch.tensor(sorted(target["boxes"].tolist())), atol=1e-4)


@pytest.mark.parametrize("name", ["rtdetr_v2_r18vd", "dfine_s", "deformable_detr_r50"])
def test_a_training_step_gives_the_models_loss_and_finite_weights(name):
    torch.manual_seed(0)
    cfg = tiny_cfg(name)
    model, adapter = models.build_model(cfg, 4), models.build_adapter(cfg)
    model.train()
    images, targets = batch()
    torch.manual_seed(1)
    losses = adapter.forward_train(model, images, targets)
    torch.manual_seed(1)
    sizes = [tuple(img.shape[-2:]) for img in images]
    reference = model(**adapter.inputs(images), labels=detr_adapter.to_hf_targets(targets, sizes)).loss
    assert float(sum(losses.values()).detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    assert {"loss_bbox", "loss_giou"} <= set(losses) and len(losses) <= 6   # grouped, not 40 aux columns
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sum(losses.values()).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = adapter.predict(model, images)
    assert out[0]["boxes"].shape[1] == 4 and out[0]["labels"].min() >= 1 and out[0]["labels"].max() <= 3


def test_ema_follows_the_rt_detr_rule_and_its_state_round_trips():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.9, warmup_iters=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d = 0.9 * (1 - torch.exp(torch.tensor(-1 / 2))).item()
    assert ema.module.weight[0, 0].item() == pytest.approx(1 - d)
    # saved mid-way and restored into a fresh EMA: the next updates are bitwise the same
    other = ModelEMA(model, decay=0.9, warmup_iters=2)
    other.load_state_dict(ema.state_dict())
    for value in (2.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        other.update(model)
    assert torch.equal(ema.module.weight, other.module.weight) and ema.updates == other.updates == 3
    assert not ema.module.weight.requires_grad


def _trainer(tmp_path, name, extra):
    from jobs.distributed import DistInfo
    from jobs.engine import Trainer
    from orchestrator import runs

    data_root = make_dataset(str(tmp_path / "data"), num_train=4, num_val=2, size=128)
    kwargs = yaml.safe_dump(tiny_overrides("rtdetr_v2_r18vd"), default_flow_style=True).strip()
    run_dir = make_run(str(tmp_path / "runs"), name, data_root, gpus=1, extra=[
        "model.name=rtdetr_v2_r18vd", "model.min_size=128", "model.max_size=128", f"model.kwargs={kwargs}",
        "data.num_workers=0", "optimizer.name=adamw", "optimizer.base_lr=0.0001", "optimizer.clip_grad_norm=0.1",
        "schedule.max_iters=3", "schedule.eval_every_iters=3", *extra])
    return run_dir, Trainer(runs.read_plan(run_dir), DistInfo(0, 1, 0, torch.device("cpu"), None))


def test_a_tiny_rt_detr_run_trains_saves_its_ema_and_evaluates_12_numbers(tmp_path):
    run_dir, trainer = _trainer(tmp_path, "ema", ["model.ema={decay: 0.99, warmup_iters: 10}"])
    try:
        trainer.resume_or_load()
        assert trainer.train() == "COMPLETED"
    finally:
        trainer.close()
    with open(os.path.join(run_dir, "status.json")) as f:
        status = json.load(f)
    assert len(status["eval"]) == 12 and all(-1 <= v <= 1 for v in status["eval"].values())
    state = torch.load(os.path.join(run_dir, "checkpoints", "final.pth"), map_location="cpu", weights_only=True)
    assert state["ema"]["updates"] == 3
    key = "model.decoder.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(state["ema"]["module"][key], state["model"][key])   # an average, not a copy
    # `orch eval RUN`: the same model rebuilt from the run, with the EMA weights, the same 12 numbers
    from jobs import predict

    loaded = predict.load_model(run_dir, device="cpu")
    assert loaded.num_classes == 4 and torch.equal(loaded.model.state_dict()[key], state["ema"]["module"][key])
    data_cfg = loaded.config["data"]["val"]
    result = predict.evaluate_checkpoint(loaded, data_cfg["ann_file"], data_cfg["img_dir"])
    assert result["stats"] == pytest.approx(status["eval"]) and result["num_detections"] > 0


def test_multiscale_training_feeds_each_batch_at_its_drawn_size(tmp_path):
    from jobs import data

    run_dir, trainer = _trainer(tmp_path, "ms", ["data.augment.multiscale=[64, 96, 160]"])
    seen: list[tuple[int, int]] = []
    original = trainer.adapter.inputs

    def spy(images, size=None):
        out = original(images, size)
        seen.append(tuple(out["pixel_values"].shape[-2:]))
        return out
    trainer.adapter.inputs = spy
    try:
        trainer.resume_or_load()
        assert trainer.train() == "COMPLETED"
    finally:
        trainer.close()
    augment = trainer.config["data"]["augment"]
    drawn = [data.multiscale_size(augment, trainer.config["seed"], it, trainer.plan["iters_per_epoch"])
             for it in range(3)]
    assert all(s in (64, 96, 160) for s in drawn)
    assert seen[:3] == [(s, s) for s in drawn]  # the training steps; then eval at the model's 128
    assert seen[3:] and all(shape == (128, 128) for shape in seen[3:])


@pytest.mark.parametrize("form", ["state_dict", "hf_folder"])
def test_init_checkpoint_loads_before_training_and_never_on_resume(tmp_path, caplog, form):
    import shutil

    from jobs import detr_models

    # the same tiny architecture trained on 5 classes: the class heads are skipped, all else loaded
    source = detr_models.build_detr("rtdetr_v2_r18vd", 5, **tiny_overrides("rtdetr_v2_r18vd"))
    if form == "hf_folder":
        init = str(tmp_path / "hf")
        source.save_pretrained(init)   # config.json + model.safetensors
    else:
        init = str(tmp_path / "init.pth")
        torch.save({"model": source.state_dict()}, init)
    job_log = logging.getLogger("orch.job")   # the run's log does not propagate to the root logger
    job_log.addHandler(caplog.handler)
    job_log.setLevel(logging.INFO)
    run_dir, trainer = _trainer(tmp_path, "init", [f"model.init_checkpoint={init}",
                                                   "model.ema={decay: 0.99, warmup_iters: 10}"])
    try:
        trainer.resume_or_load()
        key = "model.decoder.layers.0.self_attn.k_proj.weight"
        assert torch.equal(trainer.model.state_dict()[key], source.state_dict()[key])
        assert torch.equal(trainer.ema.module.state_dict()[key], source.state_dict()[key])
        assert trainer.train() == "COMPLETED"
    finally:
        trainer.close()
        job_log.removeHandler(caplog.handler)
    line = next(r.getMessage() for r in caplog.records if "fine-tuning from" in r.getMessage())
    skipped = line.split("skipped (shape differs, e.g. class heads) ")[1].split("; missing")[0]
    # exactly the class-dependent tensors: encoder and decoder class heads, the denoising embedding
    assert "enc_score_head" in skipped and "denoising_class_embed" in skipped and "class_embed.1" in skipped
    assert "bbox_embed" not in skipped and "missing (fresh init) none" in line
    # a resumed run must not read it
    if form == "hf_folder":
        shutil.rmtree(init)
    else:
        os.remove(init)
    from jobs.distributed import DistInfo
    from jobs.engine import Trainer
    from orchestrator import runs

    again = Trainer(runs.read_plan(run_dir), DistInfo(0, 1, 0, torch.device("cpu"), None))
    try:
        again.resume_or_load()
        assert again.iteration == 3 and again.ema.updates == 3
    finally:
        again.close()


def test_ema_is_a_general_feature_a_torchvision_model_uses_too(tmp_path):
    from jobs.distributed import DistInfo
    from jobs.engine import Trainer
    from orchestrator import runs

    data_root = make_dataset(str(tmp_path / "data"), num_train=4, num_val=2)
    run_dir = make_run(str(tmp_path / "runs"), "tv", data_root, gpus=1, extra=[
        "data.num_workers=0", "schedule.max_iters=2", "schedule.eval_every_iters=2",
        "model.ema={decay: 0.9, warmup_iters: 0}"])
    trainer = Trainer(runs.read_plan(run_dir), DistInfo(0, 1, 0, torch.device("cpu"), None))
    try:
        trainer.resume_or_load()
        assert trainer.train() == "COMPLETED"
    finally:
        trainer.close()
    state = torch.load(os.path.join(run_dir, "checkpoints", "final.pth"), map_location="cpu", weights_only=True)
    assert state["ema"]["updates"] == 2 and state["ema"]["module"].keys() == state["model"].keys()
    key = next(k for k, v in state["model"].items() if v.dtype.is_floating_point and "head" in k)
    assert not torch.equal(state["ema"]["module"][key], state["model"][key])
