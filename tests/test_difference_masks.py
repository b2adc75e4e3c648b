"""Difference masks on a real FF++ fake (issue 27, deliverable 5): the shared c23 samples ship no mask videos, but the
FaceSwap fake 634_660 (the rehearsal's test fake) is frame-aligned with its original 634. Two of its frames are detected
and cropped as 01_preprocess does; each crop gets a mask derived from |fake - original| inside the face box, labelled
"difference mask", and the quality pass (the rehearsal's, with a small random-init detector) reports localisation on
them. A few frames of one 1280x720 pair: a few seconds on CPU."""
from __future__ import annotations
import json

import numpy as np
import pandas as pd
import pytest

from deepfake_explain.core import ORIGINAL, write_png_atomic
from deepfake_explain.data import crop_path, ffpp_video_path
from deepfake_explain.localisation import (DIFFERENCE_MASK, QualityOptions, box_difference_mask, masks_for_crops,
                                           study_quality)
from deepfake_explain.model import build_model
from deepfake_explain.preprocess import FaceDetector, boxes_path, detect_and_crop_frames, read_frames, write_boxes
from conftest import TINY

METHOD, VIDEO, FRAMES = "FaceSwap", "634_660", [0, 40]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real_crops(shared_data, tmp_path_factory, one_thread_module):
    "Crops and boxes of 2 frames of the real fake 634_660 in the study's layout, and the decoded fake and original frames."
    ffpp, out = shared_data / "ffpp", tmp_path_factory.mktemp("diffmask")
    idx, fake = read_frames(ffpp_video_path(ffpp, METHOD, "c23", VIDEO), indices=FRAMES)
    _, orig = read_frames(ffpp_video_path(ffpp, ORIGINAL, "c23", "634"), indices=FRAMES)
    r = detect_and_crop_frames(FaceDetector("cpu"), idx, np.stack(fake))
    write_boxes(boxes_path(out, VIDEO, METHOD), r["boxes"])
    paths = []
    for c in r["crops"]:
        paths.append(crop_path(out / "crops", "test", METHOD, VIDEO, c["frame"], c["face"])); write_png_atomic(paths[-1], c["image"])
    assert len(paths) >= len(FRAMES), r["boxes"]  # a face in every frame
    return dict(ffpp=ffpp, out=out, paths=paths, boxes=r["boxes"], fake=dict(zip(idx, fake)), orig=dict(zip(idx, orig)))


def test_difference_masks_of_a_real_fake(real_crops):
    rc, sources = real_crops, []
    masks = masks_for_crops(rc["paths"], rc["ffpp"], rc["out"], 224, sources=sources)
    assert sources == [DIFFERENCE_MASK] * len(masks)
    for p, m in zip(rc["paths"], masks):
        assert m is not None and m.shape == (224, 224) and 0.05 < m.mean() < 0.8, (p, None if m is None else m.mean())
    for f in FRAMES:  # the frame's mask lies inside the face box, and is not empty
        box = rc["boxes"][f][0]
        m = box_difference_mask(rc["fake"][f], rc["orig"][f], box)
        x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
        inside = np.zeros_like(m); inside[max(y0, 0):y1, max(x0, 0):x1] = True
        assert m.any() and not (m & ~inside).any() and m[inside].mean() > 0.1, m[inside].mean()
    with pytest.raises(ValueError, match="not frame-aligned"):  # the original's frame 40 is not the fake's frame 0
        box_difference_mask(rc["fake"][0], rc["orig"][40], rc["boxes"][0][0])
    # Face2Face 750_743: its original 750 is not among the samples -> no mask, no label
    lone = [crop_path(rc["out"] / "crops", "train", "Face2Face", "750_743", 0, 0)]
    write_boxes(boxes_path(rc["out"], "750_743", "Face2Face"), {0: [[10, 10, 90, 90, 0.99]]})
    assert masks_for_crops(lone, rc["ffpp"], rc["out"], 224, sources=sources) == [None] and sources == [None]


def test_quality_pass_reports_localisation_on_difference_masks(real_crops):
    "The rehearsal's quality pass (`study_quality` with the FF++ samples as `data_root`) scores the maps against them."
    import torch
    rc = real_crops
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    table, _ = study_quality(model, rc["out"] / "crops", rc["ffpp"], rc["out"], rc["out"],
                             QualityOptions(("relevancy", "random"), batch_size=4, progress=False))
    n = len(rc["paths"])
    assert table["n_masks"].tolist() == [n, n] and (table["mask_source"] == DIFFERENCE_MASK).all()
    assert table["pointing_game"].between(0, 1).all() and table["mask_fraction"].between(0.05, 0.8).all()
    q = pd.read_csv(rc["out"] / "explanation" / "quality.csv")
    assert (q["mask_source"] == DIFFERENCE_MASK).all()
    pi = pd.read_csv(rc["out"] / "explanation" / "quality_per_image.csv")
    assert len(pi) == 2 * n and (pi["mask_source"] == DIFFERENCE_MASK).all()
    assert json.loads((rc["out"] / "explanation" / "quality.json").read_text())["mask_sources"] == {DIFFERENCE_MASK: n}
