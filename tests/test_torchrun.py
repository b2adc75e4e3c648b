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
    one = ev.predict_videos(videos, ckpt, output=tmp_path / "one", progress=False, frames_per_video=2, batch_size=4, device="cpu")
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
