"""The heavy stages under torchrun, on CPU with the gloo backend: two processes give the same results as one.

- detect + crops (`deepfake-explain-detect`, `deepfake-explain-crops`) on four shared FF++ c40 videos and a face-less
  clip: the same boxes, the same crop pixels, the same failure log (merged by rank 0, no per-rank file left);
- predict (`deepfake-explain-predict`) with a small random-init checkpoint: the same per-crop scores and verdicts,
  one predictions.csv written by rank 0, the report printed once.

The ranks are launched with `torchrun_command` (the launcher the study runner uses). Two frames per video and one
torch thread per process keep the file well under a minute on 2 cores."""
from __future__ import annotations
import json, os, subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_explain import evaluate as ev
from deepfake_explain.checkpoint import load_detector
from deepfake_explain.core import Runtime
from deepfake_explain.data import read_image_rgb
from deepfake_explain.preprocess import crops_cli, detect_cli, in_shard, rank_shard, read_boxes, torchrun_command
from conftest import TINY  # the small detector shared by the tests

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
IDS = ("183", "253", "469", "481")  # c40 originals (854x480 and smaller): quick to decode


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


def torchrun(script: str, flags, nproc: int = 2) -> subprocess.CompletedProcess:
    r = subprocess.run(torchrun_command(script, flags, nproc=nproc), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def ffpp(shared_data, tmp_path_factory) -> Path:
    "An FF++ c40 folder: four shared originals (symlinks), a face-less clip, the official splits."
    root = tmp_path_factory.mktemp("ffpp")
    vids = root / "original_sequences/youtube/c40/videos"
    vids.mkdir(parents=True)
    (root / "splits").symlink_to(shared_data / "ffpp/splits")
    for i in IDS: (vids / f"{i}.mp4").symlink_to(shared_data / "ffpp/original_sequences/youtube/c40/videos" / f"{i}.mp4")
    w = cv2.VideoWriter(str(vids / "866.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 120))
    for k in range(20): w.write(np.full((120, 160, 3), 40 + 4 * k, np.uint8))
    w.release()
    return root


def tree(root: Path, pattern: str) -> dict:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob(pattern))}


def test_detect_and_crops_two_processes_match_one(ffpp, tmp_path):
    keys = [f"Original/{i}" for i in IDS + ("866",)]
    assert all(in_shard(keys, rank_shard(None, r, 2)).any() for r in range(2)), "both ranks must get videos"
    one, two = tmp_path / "one", tmp_path / "two"
    args = dict(data_path=str(ffpp), dataset="FACEFORENSICS", compression="c40", workers=0)
    det = dict(args, frames_per_video=2, threads=1, device="cpu")
    with pytest.raises(SystemExit): detect_cli(**det, output_path=str(one), strict=True)  # the face-less clip fails
    crops_cli(**args, output_path=str(one / "crops"), boxes_path=str(one))
    r = torchrun("deepfake-explain-detect", dict(det, output_path=str(two)))
    assert r.stderr.count("deepfake-explain-detect: 5 done, 0 already done") == 1  # the whole run, reported once (rank 0)
    torchrun("deepfake-explain-crops", dict(args, output_path=str(two / "crops"), boxes_path=str(two)))

    boxes = [tree(d / "boxes", "*.json") for d in (one, two)]
    assert list(boxes[0]) == list(boxes[1]) and len(boxes[0]) == 5
    for name in boxes[0]: assert read_boxes(boxes[0][name]) == read_boxes(boxes[1][name]), name
    pngs = [tree(d / "crops", "*.png") for d in (one, two)]
    assert list(pngs[0]) == list(pngs[1]) and len(pngs[0]) >= 8
    for name in pngs[0]: np.testing.assert_array_equal(read_image_rgb(pngs[0][name]), read_image_rgb(pngs[1][name]), err_msg=name)
    for sub in ("boxes", "crops"):
        logs = [pd.read_csv(d / sub / "failures.csv").assign(error=lambda f, d=d: f.error.str.replace(str(d), "<out>")) for d in (one, two)]
        pd.testing.assert_frame_equal(*logs)
        assert logs[0].path.str.endswith("866.mp4").all() and len(logs[0]) == 1
        assert not list((two / sub).glob("failures_*")), "rank logs are merged and removed"


def test_predict_two_processes_match_one(ffpp, tmp_path, save_tiny_checkpoint):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pt", TINY)
    videos = ffpp / "original_sequences/youtube/c40/videos"
    assert all(in_shard(IDS + ("866",), (r, 2)).any() for r in range(2)), "both ranks must get videos"
    flags = ["--model_path", ckpt, "--frames_per_video", 2, "--batch_size", 4, "--device", "cpu"]
    one = ev.predict_videos(videos, ckpt, output=tmp_path / "one", options=ev.PredictOptions(frames_per_video=2, batch_size=4, progress=False),
                            runtime=Runtime("cpu"))
    r = torchrun("deepfake-explain-predict", [videos, *flags, "--output", tmp_path / "two"])
    assert r.stdout.count("183: ") == 1 and "5 videos" in r.stderr  # one report, by rank 0
    a, b = (pd.read_csv(tmp_path / d / "predictions.csv", dtype={"name": str}) for d in ("one", "two"))
    assert a.name.tolist() == b.name.tolist() == ["183", "253", "469", "481", "866"] == one.name.tolist()
    assert a.status.tolist() == b.status.tolist() == ["ok"] * 4 + ["no_face"]
    np.testing.assert_allclose(a.video_score[:4], b.video_score[:4], atol=1e-6)
    assert a.verdict.tolist() == b.verdict.tolist() and a.n_crops.tolist() == b.n_crops.tolist()
    for name in a.name[:4]:
        fa, fb = (pd.read_csv(tmp_path / d / "videos" / f"{name}.csv") for d in ("one", "two"))
        assert len(fa) > 0
        pd.testing.assert_frame_equal(fa.drop(columns="score"), fb.drop(columns="score"))
        np.testing.assert_allclose(fa.score, fb.score, atol=1e-6)
    assert json.loads((tmp_path / "two/videos/183.json").read_text())["status"] == "ok"


@pytest.fixture(scope="module")
def fake_crops(tmp_path_factory) -> Path:
    "A crop tree of 7 test-split fake crops (5 videos, generated faces at 64 px) and one real."
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    for k in range(7):
        p = root / "test_set" / ("Deepfakes" if k % 2 else "FaceSwap") / f"{k:03d}_{k + 100:03d}" / f"{k}_0.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (9, 9), 3)
        cv2.imwrite(str(p), img)
    (root / "test_set" / "Original" / "900").mkdir(parents=True)
    cv2.imwrite(str(root / "test_set" / "Original" / "900" / "0_0.png"), np.zeros((64, 64, 3), np.uint8))
    return root


def test_explanation_pass_two_processes_match_one(fake_crops, tmp_path, save_tiny_checkpoint, monkeypatch):
    """`deepfake-explain-explain --crops` (the quality table) and `--samples` under 2 gloo ranks: the same tables, maps and
    scores as one process; a pass interrupted after some batches is resumed by torchrun, those batches not redone."""
    from deepfake_explain import cli, localisation as lo
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pt", TINY)
    flags = ["--crops", fake_crops, "--model_path", ckpt, "--methods", "relevancy,random", "--batch_size", 2, "--device", "cpu"]
    one = subprocess.run(torchrun_command("deepfake-explain-explain", [*flags, "--output", tmp_path / "one"]), env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "7 fake crops of test x 2 method(s), 1 process(es)" in one.stdout
    r = torchrun("deepfake-explain-explain", [*flags, "--output", tmp_path / "two"])
    assert r.stdout.count("quality table: 7 fake crops") == 1 and "2 process(es)" in r.stdout  # reported once, by rank 0
    files = ("quality.csv", "quality_per_image.csv", "perturbation_curves.csv", "quality_vs_baselines.csv")
    for f in files:
        a, b = (pd.read_csv(tmp_path / d / "explanation" / f) for d in ("one", "two"))
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, obj=f)
    assert not (tmp_path / "two" / "explanation" / lo.QUALITY_PARTS).exists()
    # interrupted: batch 4 of 0, 2, 4, 6 fails in this process; torchrun finishes the pass, computing 4 and 6 only
    real = lo.quality_batch
    def dies(*a, **k):
        if k["seed"] == 4: raise RuntimeError("killed")
        return real(*a, **k)
    monkeypatch.setattr(lo, "quality_batch", dies)
    model, _, _ = load_detector(ckpt)
    with pytest.raises(RuntimeError, match="killed"):
        lo.study_quality(model, fake_crops, None, None, tmp_path / "three", lo.QualityOptions(("relevancy", "random"), batch_size=2, progress=False))
    assert len(list((tmp_path / "three" / "explanation" / lo.QUALITY_PARTS).glob("*.loc.csv"))) == 2
    r = torchrun("deepfake-explain-explain", [*flags, "--output", tmp_path / "three"])
    assert "2 process(es), 2 of 4 batches resumed" in r.stdout
    pd.testing.assert_frame_equal(*(pd.read_csv(tmp_path / d / "explanation" / "quality.csv") for d in ("one", "three")),
                                  check_exact=False, atol=1e-6)
    # --samples: explained figures shared out by batches; one table, by rank 0
    samples = pd.DataFrame([dict(video_name=str(p.parent), label=int(p.parent.parent.name != "Original"), video_prob=0.5,
                                 high_low_prob=0.5, example_file_name=p.name) for p in sorted(fake_crops.rglob("*.png"))])
    samples.to_csv(tmp_path / "samples.csv", index=False)
    sflags = ["--samples", tmp_path / "samples.csv", "--model_path", ckpt, "--methods", "relevancy,random", "--batch_size", 2, "--device", "cpu"]
    cli.explain_cli.__wrapped__(samples=str(tmp_path / "samples.csv"), model_path=str(ckpt), methods="relevancy,random", batch_size=2,
                               device="cpu", output=str(tmp_path / "s1"))
    r = torchrun("deepfake-explain-explain", [*sflags, "--output", tmp_path / "s2"])
    assert r.stdout.count("explained 8 images x 2 method(s)") == 1
    a, b = (pd.read_csv(tmp_path / d / "explanation" / "explanations.csv") for d in ("s1", "s2"))
    assert len(a) == 16 and a[["name", "method", "classification"]].equals(b[["name", "method", "classification"]])
    np.testing.assert_allclose(a.frame_prob, b.frame_prob, atol=1e-6)
    for fa, fb in zip(a["map"], b["map"]): np.testing.assert_allclose(np.load(fa), np.load(fb), atol=1e-5)
