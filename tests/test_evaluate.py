"Integration tests of deepfake_explain.evaluate: video aggregation, thresholds, metrics and the test report."
from __future__ import annotations
import json, re, statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, f1_score,
                             roc_auc_score, roc_curve)

from deepfake_explain import evaluate as ev
from deepfake_explain.preprocess import in_shard
from deepfake_explain.core import Runtime
from conftest import TINY  # the small detector shared by the tests
from fixtures_scores import synthetic_frame_scores


def reference_video_round(preds):  # noame12/Explainable_Attention_Based_Deepfake_Detector, model_test_train/utils.py
    for pred_value in preds:
        if pred_value > 0.55:
            return pred_value
    return statistics.mean(preds)


def frame(method, video, label, face, frame, score, root="/c/test_set"):
    return dict(video=video, method=method, label=label, face=face, frame=frame,
                path=f"{root}/{method}/{video}/{frame}_{face}.png", score=score)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rule", ev.RULES)
def test_aggregation_and_metrics_equal_sklearn(seed, rule):
    frames = synthetic_frame_scores(n_videos=15, methods=("Deepfakes", "FaceSwap", "NeuralTextures"),
                                       frames_per_track=4, two_faces_every=3, seed=seed)
    videos = ev.aggregate_videos(frames, rule)
    # independent per-track means and video rule
    for v in videos.itertuples():
        f = frames[(frames.method == v.method) & (frames.video == v.video)]
        tracks = [g.score.mean() for _, g in sorted(f.groupby("face"), key=lambda kv: kv[0])]
        np.testing.assert_allclose(v.track_scores, tracks, rtol=0, atol=1e-12)
        want = {"reference": reference_video_round, "mean": np.mean, "max": max}[rule](tracks)
        assert v.video_score == pytest.approx(want, abs=1e-12)
    y, s = videos.label.to_numpy(), videos.video_score.to_numpy()
    p = (s > 0.55).astype(int)
    m = ev.binary_metrics(y, s, 0.55)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, p), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert m["eer"] == pytest.approx(brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0), abs=1e-9)
    assert (m["tp"] + m["fn"], m["tn"] + m["fp"]) == (int(y.sum()), int((1 - y).sum()))


def test_reference_rule_first_track_over_threshold():
    rows = [frame("Deepfakes", "a", 1, 0, 0, 0.2), frame("Deepfakes", "a", 1, 1, 0, 0.7), frame("Deepfakes", "a", 1, 2, 0, 0.9),
            frame("Original", "b", 0, 0, 0, 0.1), frame("Original", "b", 0, 1, 0, 0.5)]
    v = ev.aggregate_videos(pd.DataFrame(rows)).set_index("video")
    assert v.loc["a", "video_score"] == 0.7 and v.loc["a", "prediction"] == 1   # first over 0.55, not the max
    assert v.loc["b", "video_score"] == pytest.approx(0.3) and v.loc["b", "prediction"] == 0
    v = ev.aggregate_videos(pd.DataFrame(rows), "reference", threshold=0.8).set_index("video")
    assert v.loc["a", "video_score"] == 0.9


@pytest.mark.parametrize("criterion", ["eer", "youden"])
@pytest.mark.parametrize("rule", ev.RULES)
def test_calibrated_threshold_matches_sklearn_operating_point(criterion, rule):
    val = synthetic_frame_scores(n_videos=20, seed=11)
    t, info = ev.choose_threshold(rule, criterion, val)
    assert info["source"] == "calibrated" and info["value"] == t and info["criterion"] == criterion
    vm = ev.aggregate_videos(val, "max" if rule == "reference" else rule)   # the scores calibrated on
    y, s = vm.label.to_numpy(), vm.video_score.to_numpy()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    pred = ev.aggregate_videos(val, rule, t).prediction.to_numpy()         # predictions of the rule at t
    tp, fp = pred[y == 1].mean(), pred[y == 0].mean()
    if criterion == "youden": assert tp - fp == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    else: assert abs(1 - tp - fp) == pytest.approx(np.min(np.abs(1 - tpr - fpr)), abs=1e-12)


def test_bootstrap_matches_sklearn_loop():
    v = ev.aggregate_videos(synthetic_frame_scores(seed=4))
    y, s = v.label.to_numpy(), v.video_score.to_numpy()
    ci = ev.bootstrap_ci(y, s, 0.55, n_boot=400, seed=5, chunk=400)
    idx = np.random.default_rng(5).integers(0, len(y), size=(400, len(y)))
    aucs = [roc_auc_score(y[i], s[i]) for i in idx if len(np.unique(y[i])) == 2]
    accs = [accuracy_score(y[i], s[i] > 0.55) for i in idx]
    np.testing.assert_allclose(ci["auc"], np.percentile(aucs, [2.5, 97.5]), atol=1e-12)
    np.testing.assert_allclose(ci["accuracy"], np.percentile(accs, [2.5, 97.5]), atol=1e-12)
    assert ci["n_boot_auc"] == len(aucs)


def test_samples_pick_the_right_frame():
    # video x (fake, predicted fake): track 1 is the highest, its best frame is 20; the last track (2) has
    # a higher single frame, which the reference's index bug would mix up with track 1's list
    rows = [frame("Deepfakes", "x", 1, 0, f, s) for f, s in [(0, 0.1), (10, 0.2), (20, 0.3)]]
    rows += [frame("Deepfakes", "x", 1, 1, f, s) for f, s in [(0, 0.8), (10, 0.7), (20, 0.95)]]
    rows += [frame("Deepfakes", "x", 1, 2, f, s) for f, s in [(0, 0.99), (10, 0.01), (20, 0.02)]]
    # video y (real, predicted real): lowest track 0, its lowest frame is 10
    rows += [frame("Original", "y", 0, 0, f, s) for f, s in [(0, 0.2), (10, 0.05), (20, 0.3)]]
    rows += [frame("Original", "y", 0, 1, f, s) for f, s in [(0, 0.4), (10, 0.01), (20, 0.5)]]
    frames = pd.DataFrame(rows)
    videos = ev.aggregate_videos(frames)
    assert videos.set_index("video").prediction.to_dict() == {"x": 1, "y": 0}
    smp = ev.select_samples(frames, videos).set_index("example_file_name")
    assert list(smp.reset_index().columns) == ["example_file_name"] + ev.SAMPLE_COLUMNS[:-1]
    assert sorted(smp.index) == ["10_0.png", "20_1.png"]
    assert smp.loc["20_1.png", "high_low_prob"] == 0.95 and smp.loc["20_1.png", "video_name"] == "/c/test_set/Deepfakes/x"
    assert smp.loc["10_0.png", "high_low_prob"] == 0.05 and smp.loc["10_0.png", "label"] == 0


def test_report_files_and_formats(tmp_path):
    frames = synthetic_frame_scores(seed=3)
    frames.attrs["skipped"] = [{"path": "/c/test_set/Original/bad/0_0.png", "reason": "not a decodable image"}]
    rep = ev.write_test_report(frames, tmp_path, rule="mean", n_boot=100, info={"model_path": "m.pth"})
    out = tmp_path / "test"
    assert sorted(p.name for p in out.iterdir()) == sorted(ev.REPORT_FILES.values())   # no temp files left
    assert json.loads((out / "metrics.json").read_text()) == rep
    assert rep["threshold"] == {"value": 0.55, "source": "default"} and rep["rule"] == "mean"
    assert rep["skipped"][0]["reason"] == "not a decodable image" and rep["info"] == {"model_path": "m.pth"}
    videos = pd.read_csv(out / "videos.csv")
    assert {"video", "method", "label", "video_score", "prediction", "track_scores"} <= set(videos.columns)
    assert rep["auc"] == pytest.approx(roc_auc_score(videos.label, videos.video_score), abs=1e-12)
    assert rep["frame_auc"] == pytest.approx(roc_auc_score(frames.label, frames.score), abs=1e-12)
    for ts, vs in zip(videos.track_scores, videos.video_score): assert np.mean(json.loads(ts)) == pytest.approx(vs, abs=1e-12)
    table = pd.read_csv(out / "per_method.csv")
    assert table.method.tolist() == ["Deepfakes", "Face2Face", "All"]
    assert [r["method"] for r in rep["per_method"]] == table.method.tolist()
    lines = (out / "labels.txt").read_text().splitlines()
    pat = re.compile(r"^/crops/test_set/(Original|Deepfakes|Face2Face)/\S+((?: [0-9.e-]+)+) --> [0-9.e-]+\(CORRECT: ([01])\.0\)$")
    assert len(lines) == len(videos)
    for line, v in zip(lines, videos.itertuples()):
        m = pat.match(line)
        assert m, line
        assert (m[1], len(m[2].split()), int(m[3])) == (v.method, v.n_tracks, v.label)
    smp = pd.read_csv(out / "samples.csv")
    assert list(smp.columns) == ev.SAMPLE_COLUMNS and len(smp) == len(videos)
    for name in ("roc.png", "confusion_matrix.png", "score_histograms.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_one_class_split_reports_the_rest(tmp_path):
    frames = synthetic_frame_scores(seed=2)
    fakes = frames[frames.label == 1]
    rep = ev.write_test_report(fakes, tmp_path, n_boot=50)
    assert rep["auc"] is None and rep["eer"] is None and rep["frame_auc"] is None and rep["ci"]["auc"] is None
    assert "only fake videos (24)" in rep["undefined"]["auc"] and "only fake frames" in rep["undefined"]["frame_auc"]
    assert rep["accuracy"] == pytest.approx(accuracy_score(np.ones(24), pd.read_csv(tmp_path / "test/videos.csv").prediction))
    assert rep["ci"]["accuracy"] is not None
    assert pd.read_csv(tmp_path / "test/per_method.csv").undefined.str.contains("only fake videos").all()


def test_bad_input_is_named():
    frames = synthetic_frame_scores(seed=1)
    logits = frames.assign(score=frames.score * 6 - 3)
    with pytest.raises(ValueError, match=r"not probabilities in \[0, 1\].*not logits"): ev.aggregate_videos(logits)
    with pytest.raises(ValueError, match="missing columns"): ev.aggregate_videos(frames.drop(columns="path"))
    with pytest.raises(ValueError, match="unknown video rule"): ev.aggregate_videos(frames, "median")
    with pytest.raises(ValueError, match="needs the validation split"): ev.write_test_report(frames, "/nonexistent", calibrate="eer")
    with pytest.raises(ValueError, match="one class"): ev.choose_threshold("mean", "eer", frames[frames.label == 0])


# ---- step 2: scoring crops with a checkpoint ------------------------------------------------------------
import subprocess, sys
import torch
from deepfake_explain.core import write_png_atomic
from deepfake_explain.data import crop_path, index_crops



def make_crops(root, splits=("test", "val"), n_frames=6, seed=0):
    "Crops in the crop layout: 3 reals, 2 Deepfakes and 2 FaceSwap videos per split, fakes brighter."
    rng = np.random.default_rng(seed)
    for split in splits:
        for method, videos in [("Original", ["000", "001", "002"]), ("Deepfakes", ["000_001", "001_002"]), ("FaceSwap", ["002_000", "001_000"])]:
            for v in videos:
                base = 100 if method == "Original" else 150
                for f in range(n_frames):
                    write_png_atomic(crop_path(root, split, method, v, 3 * f, 0), rng.integers(base - 30, base + 30, (32, 32, 3)).astype(np.uint8))
    return Path(root)


def save_tiny_checkpoint(path, cfg=TINY, training=True, seed=0):
    from deepfake_explain.model import build_model, load_config
    from deepfake_explain.checkpoint import CHECKPOINT_FORMAT
    cfg = load_config(cfg)
    torch.manual_seed(seed)
    net = build_model(cfg)
    torch.save({"format": CHECKPOINT_FORMAT, "model": net.state_dict(), "config": cfg, "meta": {"layout": net.layout}}
               if training else net.state_dict(), path)
    return net.eval()


def run_cli(tmp_path, *args):
    "Run `test_cli` the way the console script `deepfake-explain-test` does (a generated file calling it)."
    script = tmp_path / "deepfake-explain-test"
    script.write_text("import sys\nfrom deepfake_explain.cli import test_cli\nsys.exit(test_cli())\n")
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=600)


def test_score_frames_streams_with_workers(tmp_path):
    crops = index_crops(make_crops(tmp_path / "crops", splits=("test",)))
    net = save_tiny_checkpoint(tmp_path / "tiny.pt")
    a = ev.score_frames(net, crops, ev.ScoreOptions(frames_per_video=4, batch_size=5, workers=0, progress=False), image_size=64)
    b = ev.score_frames(net, crops, ev.ScoreOptions(frames_per_video=4, batch_size=3, workers=2, progress=False), image_size=64)
    assert len(a) == 7 * 4 and a.path.tolist() == b.path.tolist()
    np.testing.assert_allclose(a.score, b.score, atol=1e-5)
    assert a.groupby(["method", "video"]).frame.apply(list).map(lambda f: f == [0, 3, 9, 12]).all()  # equidistant(6, 4)


def test_cli_end_to_end_calibrated(tmp_path):
    root = make_crops(tmp_path / "crops")
    (root / "test_set" / "Deepfakes" / "009_001").mkdir()             # a video without faces
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    r = run_cli(tmp_path, "--model_path", tmp_path / "tiny.pt", "--data_root", root, "--output", tmp_path / "out", "--dataset", "Deepfakes",
                "--frames_per_video", 4, "--batch_size", 4, "--workers", 0, "--device", "cpu", "--calibrate", "youden", "--n_boot", 50)
    assert r.returncode == 0, r.stderr
    assert "tiny.pt [Deepfakes, test, 5 videos" in r.stdout
    m = json.loads((tmp_path / "out/test/metrics.json").read_text())
    assert m["threshold"]["source"] == "calibrated" and m["threshold"]["criterion"] == "youden"
    assert (m["n_videos"], m["n_fake"], m["n_real"], m["info"]["dataset"]) == (5, 2, 3, "Deepfakes")
    assert any(d["path"].endswith("009_001") and "no face crops" in d["reason"] for d in m["skipped"])
    # the threshold is the Youden point of the validation frame scores the run saved
    val = pd.read_csv(tmp_path / "out/test/frame_scores_val.csv", dtype={"video": str})
    assert set(val.method) == {"Original", "Deepfakes"}
    assert m["threshold"]["value"] == pytest.approx(ev.choose_threshold("reference", "youden", val)[0])
    videos = pd.read_csv(tmp_path / "out/test/videos.csv", dtype={"video": str})
    assert m["auc"] == pytest.approx(roc_auc_score(videos.label, videos.video_score))
    assert len((tmp_path / "out/test/labels.txt").read_text().splitlines()) == 5


def test_cli_checkpoint_config_mismatch_names_keys(tmp_path):
    import yaml
    root = make_crops(tmp_path / "crops", splits=("test",))
    save_tiny_checkpoint(tmp_path / "plain.pt", training=False)
    cfg = {**TINY, "spatial": {**TINY["spatial"], "emb-dim": 48}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli(tmp_path, "--model_path", tmp_path / "plain.pt", "--config", tmp_path / "other.yaml", "--data_root", root,
                "--output", tmp_path / "out", "--device", "cpu", "--workers", 0)
    assert r.returncode != 0
    assert "plain.pt" in r.stderr and "shape-mismatched keys" in r.stderr and "feature_to_embedding.weight" in r.stderr
    r = run_cli(tmp_path, "--model_path", tmp_path / "plain.pt", "--data_root", root, "--output", tmp_path / "out", "--device", "cpu")
    assert r.returncode != 0 and "a plain state dict carries no config" in r.stderr
    # the right config loads the plain state dict
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    m = ev.test_checkpoint(tmp_path / "plain.pt", tmp_path / "tiny.yaml", root, tmp_path / "ok",
                           ev.TestOptions(scoring=ev.ScoreOptions(frames_per_video=2, progress=False), n_boot=20), Runtime("cpu"))
    assert m["info"]["weights"]["kind"] == "state_dict" and m["n_videos"] == 7


def test_real_face_crops(shared_data, tmp_path):
    "Real aligned face crops (../shared/data/faces), linked into the crop layout, scored one by one and in batches."
    faces = sorted((shared_data / "faces" / "test_images_aligned").glob("*/1.png"))
    assert faces, "no aligned faces in the shared data"
    for i, f in enumerate(faces):
        dst = crop_path(tmp_path, "test", "Original", f.parent.name, 0, 0)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(f)
    net = save_tiny_checkpoint(tmp_path / "tiny.pt")
    fs = ev.score_frames(net, index_crops(tmp_path), ev.ScoreOptions(batch_size=2, progress=False), image_size=64)
    assert len(fs) == len(faces) and fs.score.between(0, 1).all()
    from deepfake_explain.data import ValTransform, read_image_rgb
    x = torch.stack([torch.tensor(ValTransform(64)(read_image_rgb(p))).float().permute(2, 0, 1) for p in fs.path])
    with torch.no_grad(): np.testing.assert_allclose(fs.score, torch.sigmoid(net(x)[:, 0]).numpy(), atol=1e-5)
    rep = ev.write_test_report(fs, tmp_path / "out", n_boot=20)   # reals only: AUC undefined, the rest reported
    assert rep["auc"] is None and "only real videos" in rep["undefined"]["auc"] and rep["accuracy"] is not None


def test_torchrun_shares_videos_out(tmp_path):
    "Two CPU processes (gloo) under torchrun: same frame scores and report as one process, written once by rank 0."
    root = make_crops(tmp_path / "crops", splits=("test",))
    keys = {f"{p.parent.name}/{p.name}" for p in root.glob("test_set/*/*")}  # <method>/<video>, the sharding key
    assert all(in_shard(sorted(keys), (r, 2)).any() for r in range(2)), "both ranks must get videos"
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    opts = "TestOptions(scoring=ScoreOptions(frames_per_video=3, batch_size=4, progress=False), n_boot=30), Runtime('cpu')"
    one = ev.test_checkpoint(tmp_path / "tiny.pt", None, root, tmp_path / "one",
                             ev.TestOptions(scoring=ev.ScoreOptions(frames_per_video=3, batch_size=4, progress=False), n_boot=30), Runtime("cpu"))
    script = tmp_path / "run.py"
    script.write_text("import json, sys, torch.distributed as dist\nfrom deepfake_explain.evaluate import ScoreOptions, TestOptions, test_checkpoint\n"
                      "from deepfake_explain.core import Runtime\n"
                      f"m = test_checkpoint({str(tmp_path / 'tiny.pt')!r}, None, {str(root)!r}, {str(tmp_path / 'two')!r}, {opts})\n"
                      "print('RESULT', json.dumps(m is not None))\n")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(l for l in r.stdout.splitlines() if l.startswith("RESULT")) == ["RESULT false", "RESULT true"]
    two = json.loads((tmp_path / "two/test/metrics.json").read_text())
    assert two["info"]["processes"] == 2 and one["info"]["processes"] == 1
    for k in ("n_videos", "n_frames", "accuracy", "auc", "f1", "frame_auc"): assert two[k] == pytest.approx(one[k], abs=1e-6), k
    a, b = (pd.read_csv(tmp_path / d / "test/frame_scores_test.csv", dtype={"video": str}) for d in ("one", "two"))
    assert a.path.tolist() == b.path.tolist()
    np.testing.assert_allclose(a.score, b.score, atol=1e-6)
