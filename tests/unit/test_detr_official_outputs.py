"""With the official weights, orch's RT-DETRv2 computes what the official code computes.

The official code (lyuwenyu/RT-DETR rtdetrv2_pytorch, a checkout next to the repo in
``../shared/thirdparty``) runs as a program (``tests/official_rtdetrv2_outputs.py``): it builds its
model, gives the EMA copy seeded random weights, saves a checkpoint shaped like its solver's
(optimizer and schedulers included) and its outputs for one image. The checkpoint goes through
``jobs.detr_weights.load_init_weights`` into ``build_detr``'s model, whose logits and boxes must
then match the official ones: names, shapes and the fused-attention split are right only if the
numbers agree.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from jobs.detr_models import build_detr  # noqa: E402
from jobs.detr_weights import load_init_weights  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RTDETR_DIR = os.path.join(HERE, "..", "..", "..", "shared", "thirdparty", "rtdetrv2_pytorch")
CONFIGS = {"rtdetr_v2_r18vd": "rtdetrv2_r18vd_120e_coco.yml", "rtdetr_v2_r50vd": "rtdetrv2_r50vd_6x_coco.yml"}


@pytest.mark.skipif(not os.path.isdir(RTDETR_DIR), reason="the official RT-DETR checkout is not next to the repo")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_official_weights_give_the_official_outputs(name, tmp_path):
    release, outputs = tmp_path / "release.pth", tmp_path / "outputs.pth"
    subprocess.run([sys.executable, os.path.join(HERE, "..", "official_rtdetrv2_outputs.py"), RTDETR_DIR,
                    os.path.join(RTDETR_DIR, "configs", "rtdetrv2", CONFIGS[name]), str(release), str(outputs),
                    "--size", "320"], check=True, cwd=tmp_path)
    expected = torch.load(outputs, weights_only=True)
    model = build_detr(name, 80).eval()
    report = load_init_weights(model, str(release))
    assert report["missing"] == [] and report["skipped"] == [] and report["unexpected"] == []
    with torch.no_grad():
        out = model(pixel_values=expected["image"])
    assert out.logits.shape == expected["pred_logits"].shape == (1, 300, 80)
    # Both select the top 300 encoder proposals; float rounding may swap two near-tied ones, so
    # queries are paired by content first (a permutation), then compared.
    ours = torch.cat([out.logits[0], out.pred_boxes[0]], -1)
    theirs = torch.cat([expected["pred_logits"][0], expected["pred_boxes"][0]], -1)
    pairing = torch.cdist(ours, theirs).argmin(1)
    assert sorted(pairing.tolist()) == list(range(300))
    assert (pairing == torch.arange(300)).float().mean() > 0.95
    torch.testing.assert_close(ours, theirs[pairing], rtol=1e-3, atol=1e-3)
