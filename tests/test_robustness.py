"""Perturbation robustness (04a_perturb, 05e_robustness): the perturbations against hand-computed values, the pass end to
end on generated crops with masks and a small detector (verdicts against 04_evaluate's scoring, maps against the masks
and their unperturbed selves, reuse, determinism), and the installed `deepfake-explain-test --perturb` as a shell calls it."""
import json, os, subprocess, sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import TINY
from fixtures_crops import synthetic_crops
from deepfake_explain.core import write_png_atomic
from deepfake_explain.data import ValTransform, crop_path, index_crops
from deepfake_explain.checkpoint import load_detector
from deepfake_explain.evaluate import ScoreOptions, aggregate_videos, score_frames
from deepfake_explain.perturb import LUMA_GAIN, PERTURBATIONS, PerturbTransform, parse_perturb, perturb, perturb_batch
from deepfake_explain.preprocess import write_boxes
from deepfake_explain.robustness import ROBUSTNESS_COLUMNS, RobustnessOptions, robustness_test

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def masked_tree(root: Path, n_videos=3, n_frames=2, size=72, seed=0) -> Path:
    "A test split of real and fake videos (crops cut at a box that is the whole frame), the fakes' per-frame masks and boxes."
    rng = np.random.default_rng(seed)
    for v in range(n_videos):
        for method, name in (("Original", f"{v:03d}"), ("Deepfakes", f"{v:03d}_{v + 1:03d}")):
            if method != "Original": write_boxes(root / "boxes" / method / f"{name}.json", {f: [[0, 0, size, size, 0.99]] for f in range(n_frames)})
            for f in range(n_frames):
                img = (rng.random((size, size, 3)) * 120 + 60).astype(np.uint8)
                if method != "Original":
                    m = np.zeros((size, size), np.uint8); y, x = rng.integers(0, size // 2, 2); m[y:y + size // 3, x:x + size // 3] = 255
                    img[m > 0] = 250
                    write_png_atomic(root / "data" / "manipulated_sequences" / method / "masks" / "videos" / name / f"{f:04d}.png",
                                     np.repeat(m[..., None], 3, -1))
                write_png_atomic(crop_path(root / "crops", "test", method, name, f, 0), img)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return masked_tree(tmp_path_factory.mktemp("robust"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, save_tiny_checkpoint):
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", TINY)
    return path, load_detector(path)[0]


def test_jpeg_noise_resize_by_hand():
    img = (np.random.default_rng(1).random((48, 40, 3)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, PERTURBATIONS["jpeg"].levels[2]])
    np.testing.assert_array_equal(perturb(img, "jpeg", 3), cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])  # quality 50
    grey = np.full((200, 200, 3), 128, np.uint8)
    luma = cv2.cvtColor(perturb(grey, "noise", 2, seed=4).astype(np.float32), cv2.COLOR_RGB2YCrCb)[..., 0] - 128
    assert luma.std() == pytest.approx(LUMA_GAIN * np.sqrt(0.002), rel=0.04)  # 13.3 levels
    np.testing.assert_array_equal(perturb(img, "resize", 1), cv2.resize(cv2.resize(img, (20, 24)), (40, 48)))  # factor 2
    a, b = perturb_batch([img, img], "block", 4, seed=9)
    assert not np.array_equal(a, b) and np.array_equal(b, perturb(img, "block", 4, seed=10))


@pytest.mark.parametrize("spec, message", [("jpeg:6", "perturbation level '6' of 'jpeg': choose from 1, 2, 3, 4, 5"),
                                           ("gauss:1", "unknown perturbation 'gauss': choose from saturation, contrast, block"),
                                           ("noise:1;blurr", "unknown perturbation 'blurr' (did you mean 'blur'?)")])
def test_bad_specs_are_one_line(spec, message):
    with pytest.raises(ValueError) as e: parse_perturb(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_robustness_pass_end_to_end(tree, tiny, tmp_path):
    _, model = tiny
    o = RobustnessOptions("noise:4;blur:1", methods=("fused", "relevancy", "random"), max_map_images=4, map_batch_size=2, n_boot=40,
                          progress=False, scoring=ScoreOptions(batch_size=4, progress=False))
    t = robustness_test(model, tree / "crops", tree / "data", tree, tmp_path / "a", o)
    out = tmp_path / "a" / "robustness"
    assert list(t.columns) == ROBUSTNESS_COLUMNS and len(t) == 3 * 3
    assert t.groupby(["perturbation", "level"], sort=False)["video_auc"].nunique().eq(1).all()  # the verdicts repeat per method
    frames = score_frames(model, index_crops(tree / "crops"), ScoreOptions(progress=False),
                          transform=PerturbTransform("blur", 1, 0, then=ValTransform(64)))
    v = aggregate_videos(frames)
    row = t[(t.perturbation == "blur") & (t.method == "fused")].iloc[0]
    assert row.video_auc == pytest.approx(roc_auc_score(v.label, v.video_score)) and row.frame_auc == pytest.approx(roc_auc_score(frames.label, frames.score))
    assert row.video_auc_low <= row.video_auc <= row.video_auc_high and row.n_videos == 6 and row.n_images == 4
    pi = pd.read_csv(out / "robustness_per_image.csv")
    assert (pi[pi.level == 0].rank_correlation == 1).all() and (pi[pi.method == "random"].rank_correlation == 1).all()
    assert pi.pointing_game.isin([0, 1]).all() and pi.mass_in_mask.between(0, 1).all() and pi.mask_fraction.between(0.05, 0.2).all()
    rec = json.loads((out / "robustness.json").read_text())
    assert rec["conditions"] == [["none", 0], ["noise", 4], ["blur", 1]] and rec["n_map_images"] == 4 and rec["skipped"]["map_images"] == []
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    again = robustness_test(model, tree / "crops", tree / "data", tree, tmp_path / "b", o)  # a fresh folder: the same numbers
    pd.testing.assert_frame_equal(again, t, check_dtype=False)
    assert robustness_test(model, tree / "crops", tree / "data", tree, tmp_path / "a", o).attrs["reused"]


def test_dataset_without_masks_keeps_the_rank_correlation(tree, tiny, tmp_path):
    "A dataset with no mask for any test fake (FF++ samples without mask videos): maps compared by rank correlation only, and the record says why."
    _, model = tiny
    o = RobustnessOptions("noise:4", methods=("fused", "random"), max_map_images=2, map_batch_size=2, n_boot=20,
                          progress=False, scoring=ScoreOptions(batch_size=4, progress=False))
    (tmp_path / "no_masks").mkdir()
    t = robustness_test(model, tree / "crops", tmp_path / "no_masks", tree, tmp_path, o)
    assert t.pointing_game.isna().all() and t.rank_correlation.notna().all() and (t.n_images == 2).all()
    why = json.loads((tmp_path / "robustness" / "robustness.json").read_text())["skipped"]["map_images"]
    assert len(why) == 1 and "no fake crop of the split has a ground-truth mask" in why[0]["reason"], why


def test_console_script_perturb(tmp_path, tiny):
    "deepfake-explain-test --perturb as a shell runs it: a bad spec exits 2 before any work; a good one writes the table."
    exe = BIN / "deepfake-explain-test"
    if not exe.exists(): pytest.skip(f"{exe} not installed (make install)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    crops = synthetic_crops(tmp_path / "crops", n_videos=6, n_frames=2, size=40, splits=("test",))
    args = [str(exe), "--model_path", str(tiny[0]), "--data_root", str(crops), "--output", str(tmp_path / "out"), "--device", "cpu",
            "--workers", "0", "--n_boot", "30"]
    bad = subprocess.run(args + ["--perturb", "jpeg:1", "--perturb", "noise:0"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "deepfake-explain-test: --perturb: perturbation level '0' of 'noise': choose from 1, 2, 3, 4, 5", bad.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    ok = subprocess.run(args + ["--perturb", "jpeg:5", "--perturb", "contrast:1;saturation:5"], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0 and "Traceback" not in ok.stderr, ok.stderr[-2000:]
    t = pd.read_csv(tmp_path / "out" / "robustness" / "robustness.csv")
    assert t[["perturbation", "level"]].values.tolist() == [["none", 0], ["jpeg", 5], ["contrast", 1], ["saturation", 5]]
    assert t.method.isna().all() and (t.n_videos == 6).all()
    assert "jpeg 5 (JPEG quality = 10): video AUC" in ok.stdout and (tmp_path / "out" / "robustness" / "robustness.png").is_file()
