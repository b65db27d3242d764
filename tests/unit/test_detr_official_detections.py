"""With the official weights, ``orch predict`` finds what the official deploy script finds.

End to end, on one non-square PNG: the official code (``tests/official_rtdetrv2_outputs.py`` run
as a program in the official checkout, see test_detr_official_outputs.py) saves a release
checkpoint with seeded random EMA weights and detects objects in the image the way
``references/deploy/rtdetrv2_torch.py`` does (PIL resize to a square, ToTensor, deploy model,
RTDETRPostProcessor: top-k over sigmoid scores, boxes scaled to the image). ``orch predict
--model rtdetr_v2_r18vd`` on that .pth and the same image must give the same labels (category id
k+1 <-> official class k with 80 categories 1..80), boxes and scores, for the best 50.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from PIL import Image, ImageDraw  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RTDETR_DIR = os.path.join(HERE, "..", "..", "..", "shared", "thirdparty", "rtdetrv2_pytorch")
CONFIG = os.path.join(RTDETR_DIR, "configs", "rtdetrv2", "rtdetrv2_r18vd_120e_coco.yml")
SIZE, TOP = 320, 50


@pytest.mark.skipif(not os.path.isdir(RTDETR_DIR), reason="the official RT-DETR checkout is not next to the repo")
def test_orch_predict_gives_the_official_detections(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    image = Image.new("RGB", (200, 150), (90, 120, 150))   # 200 wide, 150 high: flat shapes
    draw, gen = ImageDraw.Draw(image), torch.Generator().manual_seed(3)
    for _ in range(12):
        x, y, w, h, r, g, b = torch.randint(0, 256, (7,), generator=gen).tolist()
        draw.rectangle((x % 180, y % 130, x % 180 + 8 + w % 60, y % 130 + 8 + h % 50), fill=(r, g, b))
    image.save(images / "a.png")
    release, outputs, official = tmp_path / "release.pth", tmp_path / "outputs.pth", tmp_path / "official.pth"
    subprocess.run([sys.executable, os.path.join(HERE, "..", "official_rtdetrv2_outputs.py"), RTDETR_DIR, CONFIG,
                    str(release), str(outputs), "--size", str(SIZE), "--image", str(images / "a.png"),
                    "--detections", str(official)], check=True, cwd=tmp_path)
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps({"images": [], "annotations": [],
                                      "categories": [{"id": k, "name": f"c{k}"} for k in range(1, 81)]}))
    preds = tmp_path / "preds.json"
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "predict", str(release), str(images),
                    "--out", str(preds), "--model", "rtdetr_v2_r18vd", "--categories", str(categories),
                    "--min-size", str(SIZE), "--score-thr", "0", "--device", "cpu"], check=True, cwd=tmp_path)

    theirs = torch.load(official, weights_only=True)
    ours = sorted(json.loads(preds.read_text()), key=lambda d: -d["score"])
    assert len(ours) == len(theirs["scores"]) == 300
    assert {d["file_name"] for d in ours} == {"a.png"}
    labels = torch.tensor([d["category_id"] - 1 for d in ours], dtype=torch.float64)
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in ours)], dtype=torch.float64)
    scores = torch.tensor([d["score"] for d in ours], dtype=torch.float64)
    # the top TOP detections, paired by content (near-tied scores may swap two), then compared
    ours_top = torch.cat([labels[:TOP, None] * 1000, boxes[:TOP], scores[:TOP, None]], 1)
    theirs_all = torch.cat([theirs["labels"].double()[:, None] * 1000, theirs["boxes"].double(),
                            theirs["scores"].double()[:, None]], 1)
    pairing = torch.cdist(ours_top, theirs_all).argmin(1)
    assert len(set(pairing.tolist())) == TOP
    assert (pairing == torch.arange(TOP)).float().mean() > 0.9
    paired = theirs_all[pairing]
    assert torch.equal(labels[:TOP], paired[:, 0] / 1000)
    # 2e-2 px, not less: PIL resizes in 8-bit fixed point and orch in float, so the pixels at the
    # shapes' edges differ by up to 1/255 (with a noise image, everywhere: boxes then differ by 0.05
    # px); the results file also rounds boxes to 1e-3 px
    torch.testing.assert_close(boxes[:TOP], paired[:, 1:5], rtol=0, atol=2e-2)
    torch.testing.assert_close(scores[:TOP], paired[:, 5], rtol=0, atol=1e-4)
