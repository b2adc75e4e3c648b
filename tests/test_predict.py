"""Integration tests of `deepfake-explain-predict` (deepfake_explain.evaluate.predict_videos / explain.predict_cli) on raw videos.

Every video of ../shared/data/dfdc and ../shared/data/ffpp/*/c23 gets a verdict; bad files get a verdict row with the
reason; the command line exits 0 (1 with --strict when a video failed, when every video failed or on a bad checkpoint, 2 on
a bad command line); a run into an existing output merges its summary by video path. The detector is a small
random-init model saved as a training checkpoint: these tests check the plumbing (detection, crops, scores, the video
rule, the files), not the detector. 4 frames per video (2 for the short clips), so the file runs in a few minutes on 2 cores."""
from __future__ import annotations
import json, os, statistics, subprocess, sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_explain import evaluate as ev
from deepfake_explain.core import Runtime, file_sha256
from deepfake_explain.evaluate import PredictOptions
from deepfake_explain.data import equidistant
from conftest import TINY  # the small detector shared by the tests

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def reference_video_round(preds, threshold=0.55):  # the reference's utils.custom_video_round, threshold as an argument
    for p in preds:
        if p > threshold:
            return p
    return statistics.mean(preds)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, save_tiny_checkpoint) -> Path:
    "A training-style checkpoint (config inside) of a small random-init spatial model."
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", TINY)


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


def frame_count(path) -> int:
    cap = cv2.VideoCapture(str(path))
    try: return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally: cap.release()


def check_verdict_files(row, frames_per_video: int, threshold: float = 0.55):
    "The JSON and CSV of one verdict agree with each other and with an independent aggregation of the per-frame scores."
    js = json.loads(Path(row.json).read_text())
    csv = pd.read_csv(row.csv)
    assert list(csv.columns) == ev.PREDICTION_FRAME_COLUMNS
    assert js["status"] == row.status and js["name"] == row.name and js["path"] == row.path
    pd.testing.assert_frame_equal(csv, pd.DataFrame(js["frames"], columns=ev.PREDICTION_FRAME_COLUMNS), check_dtype=False)
    if row.status != "ok":
        assert len(csv) == 0 and js["verdict"] is None and row.reason
        return js
    assert 1 <= js["n_frames"] <= frames_per_video and 1 <= js["frames_with_face"] <= js["n_frames"]
    assert (csv["x1"] > csv["x0"]).all() and (csv["y1"] > csv["y0"]).all() and csv["det_prob"].between(0.9, 1).all()
    assert csv["score"].between(0, 1).all() and not csv.duplicated(["frame", "face"]).any()
    tracks = csv.groupby("face")["score"].mean()  # face order
    np.testing.assert_allclose(js["track_scores"], tracks.to_numpy(), rtol=0, atol=1e-12)
    assert js["faces"] == tracks.index.tolist() and row.n_tracks == len(tracks) and row.n_crops == len(csv)
    main = sorted(t["face"] for t in js["tracks"] if t["main"])  # the main faces vote (background faces are reported only)
    assert main and js["voting_faces"] == main and js["n_background"] == len(tracks) - len(main) == row.n_background
    assert js["video_score"] == pytest.approx(reference_video_round(list(tracks[main]), threshold), abs=1e-12)
    assert set(js["decided_by"]) <= set(main) and list(row.decided_by) == js["decided_by"]
    assert row.video_score == pytest.approx(js["video_score"], abs=1e-12)
    assert row.prediction == int(row.video_score > threshold) and row.verdict == ("fake" if row.prediction else "real")
    return js


def test_predict_every_shared_video(shared_data, checkpoint, tmp_path):
    "dfdc/ and ffpp/*/c23 (original youtube and every manipulation method): one verdict per video, files consistent."
    folders = [shared_data / "dfdc", *sorted((shared_data / "ffpp").glob("original_sequences/youtube/c23")),
               *sorted((shared_data / "ffpp").glob("manipulated_sequences/*/c23"))]
    assert len(folders) >= 3, folders
    expected = sorted(os.path.abspath(p) for f in folders for p in f.rglob("*.mp4"))
    assert len(expected) >= 8
    out = tmp_path / "pred"
    df = ev.predict_videos(folders, checkpoint, output=out, options=PredictOptions(frames_per_video=4, batch_size=8, progress=False),
                           runtime=Runtime("cpu"))
    assert list(df.columns) == ev.VERDICT_COLUMNS
    assert sorted(df["path"]) == expected  # every video, once
    assert df["name"].is_unique
    # names keep the folders (FF++ reuses file names across methods): relative to the common folder, no suffix
    for r in df.itertuples():
        assert Path(r.path).relative_to(shared_data).with_suffix("").as_posix() == r.name
    # real face videos: every one has faces and a verdict
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", ["name", "status", "reason"]]
    for r in df.itertuples():
        js = check_verdict_files(r, 4)
        assert js["n_frames"] == 4 and js["model"]["sha256"] == file_sha256(checkpoint)
        assert set(pd.read_csv(r.csv)["frame"]) <= set(equidistant(frame_count(r.path), 4))
    scores = pd.concat([pd.read_csv(r.csv) for r in df.itertuples()])["score"]
    assert scores.nunique() > len(df), "crops get their own scores"
    summary = pd.read_csv(out / "predictions.csv")
    assert summary["name"].tolist() == df["name"].tolist()
    np.testing.assert_allclose(summary["video_score"], df["video_score"].astype(float), rtol=0, atol=1e-12)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def write_blank_video(path: Path, n: int = 8):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(n): w.write(np.full((64, 96, 3), 80 + 5 * i, np.uint8))
    w.release()


@pytest.fixture
def mixed_folder(shared_data, tmp_path) -> Path:
    "A real face video (a link), a corrupt file, an empty file, a truncated video and a video without faces."
    d = tmp_path / "in"
    d.mkdir()
    (d / "street.mp4").symlink_to(shared_data / "faces" / "real_face_video.mp4")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    (d / "empty.mp4").write_bytes(b"")
    real = (shared_data / "ffpp/original_sequences/youtube/c23/videos/004.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(real[: len(real) // 3])  # in tmp_path only, never in the repository
    write_blank_video(d / "blank.mp4")
    (d / "readme.txt").write_text("not a video: not picked from a folder")
    return d


def test_bad_files_get_rows_and_the_rest_continues(mixed_folder, checkpoint, tmp_path):
    out = tmp_path / "pred"
    df = ev.predict_videos([mixed_folder, mixed_folder / "readme.txt"], checkpoint, output=out,
                           options=PredictOptions(frames_per_video=2, batch_size=4, progress=False), runtime=Runtime("cpu"))
    status = dict(zip(df["name"], df["status"]))
    assert status == {"blank": "no_face", "corrupt": "failed", "empty": "failed", "street": "ok", "truncated": "failed",
                      "readme": "failed"}
    why = dict(zip(df["name"], df["reason"]))
    for name in ("corrupt", "empty", "truncated", "readme", "blank"):
        assert str(mixed_folder) in why[name], why[name]  # the reason names the file
    assert "empty file (0 bytes)" in why["empty"] and "no face found" in why["blank"]
    assert "truncated.mp4" in why["truncated"] and "readme.txt" in why["readme"]
    for r in df.itertuples(): check_verdict_files(r, 2)
    # another rule and threshold on the same run: detections and scores reused, verdicts recomputed
    street = json.loads((out / "videos/street.json").read_text())
    thr = float(np.median(street["track_scores"]))
    again = ev.predict_videos(mixed_folder, checkpoint, output=out, options=PredictOptions(frames_per_video=2, rule="mean",
                              threshold=thr, progress=False), runtime=Runtime("cpu")).set_index("name")
    assert again.loc["street", "reused"] and again.loc["blank", "reused"] and not again.loc["corrupt", "reused"]
    main_scores = [s for f, s in zip(street["faces"], street["track_scores"]) if f in street["voting_faces"]]
    assert again.loc["street", "video_score"] == pytest.approx(np.mean(main_scores), abs=1e-12)
    assert again.loc["street", "prediction"] == int(np.mean(main_scores) > thr)
    assert again.loc["street", "decided_by"] == street["voting_faces"]  # the mean rule: every voting track
    # other settings (frames per video): no reuse
    third = ev.predict_videos(mixed_folder / "street.mp4", checkpoint, output=out, options=PredictOptions(frames_per_video=3, progress=False),
                            runtime=Runtime("cpu"))
    assert not third["reused"].any() and json.loads((out / "videos/street.json").read_text())["n_frames"] == 3
    # a minimum face size: the crowd's small faces are left out and counted, the verdict made on the large ones
    sides = [max(f["x1"] - f["x0"], f["y1"] - f["y0"]) for f in json.loads((out / "videos/street.json").read_text())["frames"]]
    cut = float(np.median(sides))
    big = ev.predict_videos(mixed_folder / "street.mp4", checkpoint, output=out,
                            options=PredictOptions(frames_per_video=3, min_face=cut, progress=False), runtime=Runtime("cpu")).iloc[0]
    assert not big.reused and big.small_faces == sum(s < cut for s in sides) > 0 and big.n_crops == sum(s >= cut for s in sides)
    with pytest.raises(ValueError, match="min_face must be a number of pixels >= 0"):
        ev.predict_videos(mixed_folder, checkpoint, output=out, options=PredictOptions(min_face=-1))


def test_predict_arguments_refused(mixed_folder, checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4: no such file or folder"):
        ev.predict_videos(mixed_folder / "nope.mp4", checkpoint, output=tmp_path)
    (tmp_path / "novideo").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        ev.predict_videos(tmp_path / "novideo", checkpoint, output=tmp_path)
    with pytest.raises(ValueError, match="unknown video rule 'median'"):
        ev.predict_videos(mixed_folder, checkpoint, output=tmp_path, options=PredictOptions(rule="median"))
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        ev.predict_videos(mixed_folder, tmp_path / "missing.pt", output=tmp_path)
    wrong = dict(TINY, spatial=dict(TINY["spatial"], **{"emb-dim": 48}))
    with pytest.raises(ValueError, match="shape-mismatched keys"):
        ev.predict_videos(mixed_folder, checkpoint, config=wrong, output=tmp_path)
    assert not (tmp_path / "predictions.csv").exists()


@pytest.fixture
def run_cli(tmp_path):
    "Run `predict_cli` the way the console script `deepfake-explain-predict` does (a generated file calling it)."
    script = tmp_path / "deepfake_explain_predict.py"
    script.write_text("import sys\nfrom deepfake_explain.cli import predict_cli\nsys.exit(predict_cli())\n")
    return lambda *args: subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)


def test_cli(mixed_folder, checkpoint, tmp_path, run_cli):
    out = tmp_path / "cli"
    r = run_cli(mixed_folder, "--model_path", checkpoint, "--output", out, "--frames_per_video", 2, "--batch_size", 4,
                "--device", "cpu", "--threshold", 0.5)
    assert r.returncode == 0, r.stderr
    summary = pd.read_csv(out / "predictions.csv")
    assert sorted(summary["name"]) == ["blank", "corrupt", "empty", "street", "truncated"]
    street = summary.set_index("name").loc["street"]
    assert street["status"] == "ok" and street["threshold"] == 0.5 and street["verdict"] in ("fake", "real")
    js = json.loads((out / "videos/street.json").read_text())
    assert js["verdict"] == street["verdict"] and js["frames"] and len(pd.read_csv(out / "videos/street.csv")) == len(js["frames"])
    assert json.loads((out / "videos/corrupt.json").read_text())["status"] == "failed"
    assert f"street: {street['verdict']}" in r.stdout and "corrupt: failed" in r.stdout
    assert "5 videos" in r.stderr and "3 unreadable" in r.stderr and "1 without a face" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "deepfake-explain-predict: 4 of 5 videos failed"
    assert r.stdout.startswith("detector provenance: unknown") and "decided by track" in r.stdout
    # --strict: a failed video makes the exit status 1 (the verdicts are written all the same)
    r = run_cli(mixed_folder, "--model_path", checkpoint, "--output", out, "--frames_per_video", 2, "--device", "cpu", "--strict")
    assert r.returncode == 1, r.stderr
    r = run_cli(mixed_folder / "street.mp4", "--model_path", checkpoint, "--output", out, "--frames_per_video", 2, "--device", "cpu", "--strict")
    assert r.returncode == 0, r.stderr
    # a bad checkpoint stops the run: message, no traceback, exit 1 (2 is for a bad command line)
    r = run_cli(mixed_folder, "--model_path", tmp_path / "missing.pt", "--output", out)
    assert r.returncode == 1 and "missing.pt: checkpoint file not found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(mixed_folder, "--model_path", checkpoint, "--output", out, "--voting", "some")
    assert r.returncode == 2 and "--voting must be one of" in r.stderr
    # every video failed: exit 1 although nothing went wrong with the run itself; the summary keeps the earlier rows
    r = run_cli(mixed_folder / "empty.mp4", "--model_path", checkpoint, "--output", out, "--device", "cpu")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == "deepfake-explain-predict: 1 of 1 videos failed"
    assert "1 videos, 0 fake, 0 real" in r.stderr  # this run's counts
    assert sorted(pd.read_csv(out / "predictions.csv")["name"]) == ["blank", "corrupt", "empty", "street", "truncated"]


def test_predict_into_an_existing_output_merges(mixed_folder, checkpoint, tmp_path):
    "A second run into the same output keeps the first run's rows of other videos and replaces the rows of its own videos."
    out, po = tmp_path / "pred", PredictOptions(frames_per_video=2, batch_size=4, progress=False)
    kw = dict(options=po, runtime=Runtime("cpu"))
    first = ev.predict_videos([mixed_folder / "street.mp4", mixed_folder / "empty.mp4"], checkpoint, output=out, **kw)
    second = ev.predict_videos([mixed_folder / "street.mp4", mixed_folder / "blank.mp4"], checkpoint, output=out, runtime=Runtime("cpu"),
                             options=PredictOptions(frames_per_video=2, batch_size=4, progress=False, rule="max"))
    assert len(second) == 2 and second["reused"].tolist() == [True, False]  # the returned table: this run only
    summary = pd.read_csv(out / "predictions.csv")
    assert summary["name"].tolist() == ["empty", "street", "blank"]  # the earlier row kept, then this run's rows
    assert summary.set_index("name").loc["street", "rule"] == "max"   # replaced by this run's verdict
    assert summary.set_index("name").loc["empty", "status"] == first.set_index("name").loc["empty", "status"] == "failed"
    (out / "predictions.csv").write_text("not,a\nsummary,table\n")
    with pytest.raises(ValueError, match="predictions.csv: not a predictions table"):
        ev.predict_videos(mixed_folder / "street.mp4", checkpoint, output=out, **kw)
