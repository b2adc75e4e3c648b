"""Self-blended training (issue 28): each generation step against a hand-made example, determinism per
(seed, epoch, face), pairs in one batch on the loader's workers, and the bad inputs a run must refuse.

Everything runs on generated 48 px faces (`fixtures_crops.sbi_crops`) or small arrays: a few seconds in all."""
from __future__ import annotations
import json

import cv2
import numpy as np
import pytest
import torch

from fixtures_crops import sbi_crops, synthetic_crops
from deepfake_explain.data import index_crops
from deepfake_explain.preprocess import DONE_MARKER, LandmarksError
from deepfake_explain.self_blended import (SBIOptions, SelfBlendedDataset, alter_copy, affine_pair, blend, blend_mask,
                                           draw_sbi, elastic_mask, face_ellipse, landmark_mask, self_blend)
from deepfake_explain.train import make_datasets, make_loader, start_epoch

# a hand-made upright face in a 40 px crop: eyes 20 px apart at y 10, mouth corners at y 30
LM = np.array([[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]], float)


def _face(size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (size, size, 3)).astype(np.uint8)


def test_mask_lies_inside_the_hull():
    "The five-point ellipse by hand: centre 0.6 of the way eyes -> mouth, half-axes 0.95 x 20 and 1.1 x 20 px."
    centre, axes, angle = face_ellipse(LM)
    np.testing.assert_allclose(centre, [20, 22]); np.testing.assert_allclose(axes, [19, 22]); assert angle == 0
    m = landmark_mask(LM, 40)
    ys, xs = np.nonzero(m)
    assert ((xs - 20) ** 2 / 19 ** 2 + (ys - 22) ** 2 / 22 ** 2 <= 1).all()       # every mask pixel inside the ellipse
    assert m[22, 20] == m[22, 38] == m[0, 20] == 1 and m[22, 0] == m[0, 5] == 0    # its edges: x 1..39, y 0..39
    hull = cv2.convexHull(np.stack([xs, ys], 1).astype(np.int32))                   # the mask is convex: it is its hull
    filled = cv2.fillConvexPoly(np.zeros_like(m), hull, 1)
    assert (filled >= m).all() and (filled != m).sum() <= 0.03 * m.sum()
    assert all(m[int(y), int(x)] for x, y in LM)                                   # the landmarks lie inside
    for seed in range(20):                                                           # after the deformations: near it
        _, _, mask, _ = self_blend(_face(seed=seed), LM, seed, 0, 0)
        ys, xs = np.nonzero(mask > 0)
        assert ((xs - 20) ** 2 / (1.5 * 19) ** 2 + (ys - 22) ** 2 / (1.5 * 22) ** 2 <= 1).all(), seed


def test_blend_is_mask_times_source_plus_rest_target_exactly():
    src, tgt = _face(seed=1).astype(np.float64), _face(seed=2).astype(np.float64)
    m = np.random.default_rng(3).random((40, 40))
    np.testing.assert_array_equal(blend(src.astype(np.uint8), tgt.astype(np.uint8), m), m[..., None] * src + (1 - m[..., None]) * tgt)
    np.testing.assert_array_equal(blend(src.astype(np.uint8), tgt.astype(np.uint8), np.ones((40, 40))), src)
    # a whole self-blend recomputed from its record, step by step (a draw without JPEG)
    face = _face(seed=4)
    for seed in range(40):
        real, fake, mask, rec = self_blend(face, LM, seed, 1, 2)
        if rec["jpeg_quality"] is None: break
    source, target = face.copy(), face.copy()
    if rec["altered"] == "source": source = alter_copy(source, rec)
    else: target = alter_copy(target, rec)
    source, hard = affine_pair(source, landmark_mask(LM, 40), rec)
    soft = blend_mask(elastic_mask(hard, rec), rec)
    np.testing.assert_array_equal(mask, soft); np.testing.assert_array_equal(real, target)
    np.testing.assert_array_equal(fake, np.clip(np.rint(blend(source, target, soft)), 0, 255).astype(np.uint8))


def test_ratio_comes_from_its_set():
    o = SBIOptions()
    ratios = [draw_sbi(np.random.default_rng(i), o)["ratio"] for i in range(600)]
    assert set(ratios) == {0.25, 0.5, 0.75, 1.0}
    assert 0.42 < np.mean(np.array(ratios) == 1.0) < 0.58                            # 1 is three of the six choices
    for seed in range(5):
        _, _, mask, rec = self_blend(_face(), LM, seed, 0, 0)
        assert abs(mask.max() - rec["ratio"]) < 1e-3
    with pytest.raises(ValueError, match="ratios"): SBIOptions(ratios=(0.5, 1.5))


def test_deterministic_per_seed_epoch_face(tmp_path):
    face = _face()
    a = self_blend(face, LM, 1, 2, 3)
    np.testing.assert_array_equal(a[1], self_blend(face, LM, 1, 2, 3)[1])
    for other in ((0, 2, 3), (1, 0, 3), (1, 2, 0)):
        assert not np.array_equal(a[1], self_blend(face, LM, *other)[1]), other
    # the loader: the same pairs on a worker process as in this one, in any order
    ds = SelfBlendedDataset(index_crops(sbi_crops(tmp_path / "c", n_videos=2, n_frames=2, splits=("train",))), 32, seed=5)
    ds.set_epoch(3)
    here = torch.cat([b[0] for b in make_loader(ds, 2, False, workers=0)])
    there = torch.cat([b[0] for b in make_loader(ds, 2, False, workers=1)])
    assert torch.equal(here, there)
    single = ds[1][0]                                                               # face 1 alone, out of order
    assert torch.equal(single[1], here[3]) and torch.equal(single[0], here[1])


def test_a_real_face_and_its_fake_share_a_batch(tmp_path):
    ds = SelfBlendedDataset(index_crops(sbi_crops(tmp_path / "c", n_videos=3, n_frames=2, splits=("train",))), 32, seed=0)
    ld = make_loader(ds, 4, shuffle=True, seed=0)
    start_epoch(ld, 0, 1)
    seen = []
    for x, y, idx in ld:
        n = len(idx) // 2
        assert y.tolist() == [0] * n + [1] * n and (idx[n:] == idx[:n] + len(ds)).all()
        for k, i in enumerate(idx[:n].tolist()):
            real, fake = ds[i][0]
            assert torch.equal(x[k], real) and torch.equal(x[n + k], fake)
        seen += idx[:n].tolist()
    assert sorted(seen) == list(range(len(ds)))


def test_bad_input_names_the_fix(tmp_path):
    cfg = {"model": {"image-size": 32}, "training": {"fakes": "self-blended", "frames-per-video": 2}}
    fakes_only = synthetic_crops(tmp_path / "f", n_videos=4, n_frames=2)
    for split in ("train", "val"):
        import shutil; shutil.rmtree(fakes_only / f"{split}_set" / "Original")
    with pytest.raises(ValueError, match=r"train_set: no real face crops \(Original\).*crop real videos"):
        make_datasets(fakes_only, cfg)
    old = sbi_crops(tmp_path / "old", n_videos=2, n_frames=2)                       # crops made before landmarks were stored
    marker = next(old.rglob(DONE_MARKER))
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "landmarks"}))
    with pytest.raises(LandmarksError, match=f"{marker.parent}: crops stored without landmarks.*rerun the crops stage"):
        make_datasets(old, cfg)
    with pytest.raises(ValueError, match=r"'training.fakes'.*must be one of \['dataset', 'self-blended'\]"):
        make_datasets(old, {**cfg, "training": {"fakes": "sbi"}})
