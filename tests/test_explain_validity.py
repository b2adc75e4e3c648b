"""Explanation validity (05b_validity): the restoration test, ROAD's noisy linear imputation and the
cascading randomisation sanity check against hand-computed values, and the study's validity stage end to end on a
generated mini-forensics set (its own frames, boxes and crops)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from deepfake_explain.core import write_png_atomic
from deepfake_explain.data import ValTransform, ffpp_video_path
from deepfake_explain.explain import METHODS
from deepfake_explain.localisation import crop_mask
from deepfake_explain.validity import (ValidityOptions, curve_aucs, noisy_linear_impute, original_crops, rank_correlation,
                                      restoration_curves, restoration_informative, road_curves, sanity_check, study_validity)
from deepfake_explain.mini_forensics import MiniSpec, make_mini_forensics, read_masks
from deepfake_explain.model import build_model
from deepfake_explain.preprocess import crop_face, read_frames, write_boxes

SMALL = {"model": {"image-size": 64}, "spatial": {"depth": 2, "emb-dim": 32, "heads": 2, "dim-head": 16, "mlp-dim": 64}}


class RegionModel(nn.Module):
    "Fake probability = mean of channel 0 over the top-left 2x2 pixels / 255 (one logit)."
    def forward(self, x): return torch.logit((x[:, 0, :2, :2].mean((1, 2)) / 255).clamp(1e-6, 1 - 1e-6))[:, None]


def test_restoration_hand_values_and_oracle_below_random():
    fake, orig = torch.full((6, 3, 4, 4), 255.0), torch.zeros(6, 3, 4, 4)
    oracle = torch.zeros(6, 4, 4); oracle[:, :2, :2] = 1  # the manipulated block first
    rand = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(3))
    curves = pd.concat([restoration_curves(RegionModel(), fake, orig, m).assign(order=n)
                        for n, m in (("oracle", oracle), ("random", rand), ("last", 1 - oracle))])
    np.testing.assert_allclose(curves[curves.order == "oracle"].groupby("fraction")["fake_prob"].mean(), [1, 0, 0, 0, 0], atol=1e-4)
    aucs = curve_aucs(curves)
    by = aucs.groupby("order")["auc"].mean()
    assert by["oracle"] == pytest.approx(0.125, abs=1e-4) and by["last"] == pytest.approx(0.875, abs=1e-4)
    assert by["oracle"] < by["random"] < by["last"]
    assert restoration_informative(aucs)["informative"]


def test_road_imputation_hand_values():
    line = noisy_linear_impute(np.array([[[0., 0, 0, 3]]]), np.array([[False, True, True, False]]), noise=0)
    np.testing.assert_allclose(line[0, 0], [0, 1, 2, 3], atol=1e-9)
    x = torch.zeros(1, 3, 4, 4); x[:, :, :2, :2] = 255
    heat = torch.zeros(1, 4, 4); heat[:, :2, :2] = 1
    aucs = curve_aucs(road_curves(RegionModel(), x, heat, noise=0)).set_index("order")["auc"]
    assert aucs["morf"] == pytest.approx(0.125, abs=1e-4) and aucs["lerf"] == pytest.approx(0.75, abs=1e-4)


def test_rank_correlation_hand_values():
    np.testing.assert_allclose(rank_correlation(np.array([[1., 2, 3, 4]] * 2), np.array([[4., 3, 2, 1], [1, 3, 2, 4]])), [-1, 0.8])


@pytest.fixture(scope="module")
def study_tree(tmp_path_factory):
    "A generated mini-forensics set with the test split's fakes cut into crops at a fixed box (boxes files as 01_preprocess writes)."
    root = tmp_path_factory.mktemp("validity")
    data = root / "mini_forensics"
    man = make_mini_forensics(data, MiniSpec(seed=0, n_frames=2, size=96, n_pairs=(1, 1, 1), methods=["SelfBlended"]), progress=False)
    box = [14.0, 10.0, 82.0, 86.0, 0.99]
    for video in [f["video"] for f in man["fakes"] if f["split"] == "test"]:
        write_boxes(root / "boxes" / "SelfBlended" / f"{video}.json", {0: [box], 1: [box]})
        idx, frames = read_frames(ffpp_video_path(data, "SelfBlended", "c23", video), indices=[0, 1])
        for i, fr in zip(idx, frames): write_png_atomic(root / "crops" / "test_set" / "SelfBlended" / video / f"{i}_0.png", crop_face(fr, box))
    return root, man


def test_original_crops_are_frame_aligned(study_tree):
    root, man = study_tree
    crops = sorted((root / "crops" / "test_set").rglob("*.png"))
    origs = original_crops(crops, root / "mini_forensics", root, 64)
    for p, o in zip(crops, origs):
        video, frame = p.parent.name, int(p.stem.split("_")[0])
        fake = ValTransform(64)(crop_face(read_frames(ffpp_video_path(root / "mini_forensics", "SelfBlended", "c23", video), indices=[frame])[1][0],
                                          [14.0, 10.0, 82.0, 86.0]))
        mask = crop_mask(read_masks(root / "mini_forensics", "SelfBlended", video)[frame].astype(np.uint8) * 255, [14.0, 10.0, 82.0, 86.0], 64)
        differ = np.abs(fake.astype(int) - o.astype(int)).max(-1) > 40  # beyond mp4v noise
        assert differ.any() and (differ & ~mask).mean() < 0.02  # the two crops differ where the fake was made, nowhere else
        wrong = original_crops([p.with_name(f"{1 - frame}_0.png")], root / "mini_forensics", root, 64)[0]  # the other frame
        assert (np.abs(fake.astype(int) - wrong.astype(int)).max(-1) > 40).mean() > 5 * (differ & ~mask).mean() + 0.01


def test_study_validity_end_to_end(study_tree):
    root, man = study_tree
    torch.manual_seed(0)
    model = build_model(SMALL)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm): m.momentum = None
    with torch.no_grad(): model.train()(torch.rand(8, 3, 64, 64) * 255)
    torch.manual_seed(1)
    shuffled = build_model(SMALL)  # stands in for the shuffled-label model: other weights
    for m in shuffled.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm): m.momentum = None
    with torch.no_grad(): shuffled.train()(torch.rand(8, 3, 64, 64) * 255)
    res = study_validity(model.eval(), root / "crops", root / "mini_forensics", root, root,
                         ValidityOptions(max_images=4, road_images=2, sanity_images=2),
                         shuffled=(shuffled.eval(), root / "train_shuffled" / "last.pt", "shuffled (seed 0)"))
    out = root / "explanation"
    for f in ("restoration.csv", "restoration.png", "road.csv", "road.png", "sanity.csv", "sanity.png", "validity_per_image.csv",
              "validity_vs_baselines.csv", "validity.json", "data_randomisation.csv", "data_randomisation_summary.csv"):
        assert (out / f).stat().st_size > 0, f
    rest = pd.read_csv(out / "restoration.csv")
    assert set(rest["order"]) == {*METHODS, "oracle"} and rest["image"].nunique() == 4
    ends = rest[rest.fraction.isin([0.0, 1.0])].groupby(["image", "fraction"])["fake_prob"].nunique()
    assert (ends == 1).all()  # every order starts at the fake and ends at the original
    summary = json.loads((out / "validity.json").read_text())
    assert summary["identities"]["identity_disjoint"] is False and "shares identities" in summary["identities"]["statement"]
    assert set(summary["restoration"]) >= {"informative", "oracle_auc", "random_auc"}
    dr = summary["data_randomisation"]  # every map against the shuffled-label model's, on the sanity check's images
    assert dr["labels"] == "shuffled (seed 0)" and dr["n_images"] == 2 and set(dr["methods"]) == set(METHODS)
    assert dr["methods"]["random"]["mean_spearman"] == pytest.approx(1)  # the control: the same map whatever the model
    assert all(0 <= r["mean_abs_spearman_ci_low"] <= r["mean_abs_spearman"] <= r["mean_abs_spearman_ci_high"] <= 1 for m, r in dr["methods"].items() if r["n_images"])
    assert pd.read_csv(out / "sanity_summary.csv").columns[-1] == "shuffled labels"
    san = pd.read_csv(out / "sanity.csv")
    assert len(san) == len(METHODS) * 5 * 2 and np.allclose(san[san.method == "random"]["spearman"], 1)
    pi = pd.read_csv(out / "validity_per_image.csv")
    assert pi[pi.method == "relevancy"]["road_morf_auc"].notna().sum() == 2 and pi[pi.method == "oracle"]["road_morf_auc"].isna().all()


def test_masks_for_crops_read_ffpp_mask_videos(tmp_path, study_tree):
    "FF++ keeps one mask video per fake (`<Method>/masks/videos/<id>.mp4`): the crop's mask is cut from its frame at the crop's box."
    import cv2
    from deepfake_explain.localisation import masks_for_crops
    mv = tmp_path / "manipulated_sequences" / "Deepfakes" / "masks" / "videos" / "000_003.mp4"
    mv.parent.mkdir(parents=True)
    w = cv2.VideoWriter(str(mv), cv2.VideoWriter_fourcc(*"mp4v"), 25, (128, 96))
    for i in range(3):
        f = np.zeros((96, 128, 3), np.uint8); f[32:64, 40 + 16 * i:72 + 16 * i] = 255; w.write(f)  # moves 16 px a frame
    w.release()
    write_boxes(tmp_path / "boxes" / "Deepfakes" / "000_003.json", {1: [[40, 16, 104, 80, 0.99]], 2: [None]})
    crops = [tmp_path / "crops" / "test_set" / "Deepfakes" / "000_003" / n for n in ("1_0.png", "2_0.png")]
    crops.append(tmp_path / "crops" / "test_set" / "Original" / "000" / "1_0.png")
    m = masks_for_crops(crops, tmp_path, tmp_path, 32)
    gt = np.zeros((32, 32), bool); gt[8:24, 8:24] = True  # frame 1: square x 56..88, y 32..64 in the 64-px box at (40, 16), halved
    assert m[0].shape == (32, 32) and (m[0] == gt).mean() > 0.97 and m[0][10:22, 10:22].all()
    assert m[1] is None and m[2] is None  # no box for face 0 in frame 2; reals have no masks
    root, _ = study_tree  # mini-forensics' per-frame PNG masks through the same function
    crop = sorted((root / "crops" / "test_set").rglob("*.png"))[0]
    frame = int(crop.stem.split("_")[0])
    want = crop_mask(read_masks(root / "mini_forensics", "SelfBlended", crop.parent.name)[frame].astype(np.uint8) * 255,
                     [14.0, 10.0, 82.0, 86.0], 64)
    np.testing.assert_array_equal(masks_for_crops([crop], root / "mini_forensics", root, 64)[0], want)
