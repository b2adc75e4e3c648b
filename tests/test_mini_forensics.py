"""Integration tests of the generated demo set mini-forensics (deepfake_explain.mini_forensics).

The masks are checked against the decoded videos with code written here (cv2 directly), not with the
library's own `mask_agreement`, so a bug in the library's reading cannot hide a bug in its writing.
"""
from __future__ import annotations
import csv, hashlib, json, shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import deepfake_explain.mini_forensics as mf
from deepfake_explain.mini_forensics import (MINI_METHODS, MINI_REAL_METHOD, MINI_SPLITS, LABEL_COLUMNS,
                                             MiniSpec, make_mini_forensics, load_face_folder, read_masks, dataset_digest)

SMALL = dict(n_frames=6, size=96, n_pairs=(1, 1, 1))


def _make(root, overwrite=False, **spec):
    "A small set (`SMALL`, changed by `spec`) under `root`."
    return make_mini_forensics(root, MiniSpec(**{**SMALL, **spec}), overwrite=overwrite, progress=False)


def _decode(path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path)); frames = []
    while True:
        ok, f = cap.read()
        if not ok: break
        frames.append(f)
    cap.release()
    assert frames, f"{path}: no frames decoded"
    return np.stack(frames).astype(np.int16)  # (T, H, W, 3) BGR


def _masks(d: Path) -> np.ndarray:
    files = sorted(d.glob("*.png"))
    assert [p.name for p in files] == [f"{i:04d}.png" for i in range(len(files))], d
    return np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files])  # (T, H, W) uint8


def _file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _labels(root: Path) -> list[dict]:
    with open(root / "labels.csv", newline="") as f: return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def wide(shared_data, tmp_path_factory):
    "A set widened with the real faces of ../shared/data/faces (identity-disjoint splits)."
    root = tmp_path_factory.mktemp("wide")
    m = make_mini_forensics(root, MiniSpec(seed=0, n_frames=12, size=128, n_pairs=(4, 2, 2), extra_faces=shared_data / "faces"),
                            progress=False)
    return root, m


def test_extra_faces_widen_identities(wide):
    root, m = wide
    idents = {s["identity"] for s in m["sources"]}
    assert {"grace_hopper", "eileen_collins", "paul_rudd", "bradley_cooper", "kate_siegel"} <= idents
    # the portrait and the aligned crop of one person are one identity
    assert sum(s["identity"] == "paul_rudd" for s in m["sources"]) == 2
    assert m["identity_disjoint"] is True
    by_split = {s: {c["identity"] for c in m["clips"] if c["split"] == s} for s in MINI_SPLITS}
    for a in MINI_SPLITS:
        for b in MINI_SPLITS:
            if a < b: assert not by_split[a] & by_split[b], (a, b, by_split[a] & by_split[b])


def test_labels_match_files_and_splits(wide, shared_data):
    root, m = wide
    rows = _labels(root)
    with open(shared_data / "ffpp" / "labels.csv", newline="") as f:
        assert list(csv.DictReader(f).fieldnames) == LABEL_COLUMNS
    assert list(rows[0]) == LABEL_COLUMNS
    assert sorted(r["path"] for r in rows) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4"))
    splits = {s: json.loads((root / "splits" / f"{s}.json").read_text()) for s in MINI_SPLITS}
    split_of = {i: s for s, ps in splits.items() for p in ps for i in p}
    for r in rows:
        p = root / r["path"]
        assert int(r["size_bytes"]) == p.stat().st_size
        v = _decode(p)
        assert v.shape == (int(r["frame_count_meta"]), int(r["height"]), int(r["width"]), 3)
        if r["label"] == "REAL":
            assert r["method"] == MINI_REAL_METHOD and r["path"].startswith("original_sequences/youtube/c23/videos/")
            assert r["ffpp_official_split"] == split_of[p.stem]
        else:
            assert r["label"] == "FAKE" and r["method"] in MINI_METHODS
            t, s = p.stem.split("_")
            assert [t, s] in splits[r["ffpp_official_split"]] or [s, t] in splits[r["ffpp_official_split"]]
            assert r["original"] == f"original_sequences/youtube/c23/videos/{t}.mp4" and (root / r["original"]).exists()
    for s in MINI_SPLITS:  # every split: reals and fakes of every method
        assert {r["method"] for r in rows if r["ffpp_official_split"] == s} == set(MINI_METHODS) | {MINI_REAL_METHOD}


def test_masks_are_where_decoded_fakes_differ(wide):
    root, m = wide
    thresh = m["params"]["mask_thresh"]
    ious = {k: [] for k in MINI_METHODS}
    for f in m["fakes"]:
        orig = _decode(root / "original_sequences/youtube/c23/videos" / f"{f['target']}.mp4")
        fake = _decode(root / "manipulated_sequences" / f["method"] / "c23/videos" / f"{f['video']}.mp4")
        mask = _masks(root / "manipulated_sequences" / f["method"] / "masks/videos" / f["video"])
        assert set(np.unique(mask)) <= {0, 255} and mask.shape == orig.shape[:3]
        gt = mask > 0
        assert gt.reshape(len(gt), -1).any(1).all(), f"{f['video']}: a frame without manipulated pixels"
        diff = np.abs(fake - orig).max(-1) > thresh
        ious[f["method"]].append((diff & gt).sum() / (diff | gt).sum())
        far = ~np.stack([cv2.dilate(g.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0 for g in gt])
        assert (diff & far).sum() / far.sum() < 0.01, f"{f['method']}/{f['video']}: decoded videos differ away from the mask"
    for k, v in ious.items():
        assert np.mean(v) >= 0.8 and min(v) >= 0.7, (k, np.round(v, 3))


def test_reals_have_no_masks(wide):
    root, m = wide
    assert not list((root / "original_sequences").rglob("*.png"))
    reals = [c["id"] for c in m["clips"]]
    for meth in MINI_METHODS:
        mask_videos = {p.name for p in (root / "manipulated_sequences" / meth / "masks" / "videos").iterdir()}
        assert not mask_videos & set(reals)
        assert mask_videos == {f["video"] for f in m["fakes"] if f["method"] == meth}
        with pytest.raises(FileNotFoundError, match="no masks"): read_masks(root, meth, reals[0])


def test_face_detection_is_deterministic(shared_data):
    a, _ = load_face_folder(shared_data / "faces" / "test_images_aligned")
    b, _ = load_face_folder(shared_data / "faces" / "test_images_aligned")
    assert [(s.name, s.digest()) for s in a] == [(s.name, s.digest()) for s in b] and len(a) == 5


def test_same_seed_same_files(tmp_path):
    a = _make(tmp_path / "a", seed=3)
    b = _make(tmp_path / "b", seed=3)
    c = _make(tmp_path / "c", seed=4)
    ha, hb = _file_hashes(tmp_path / "a"), _file_hashes(tmp_path / "b")
    assert ha == hb and len(ha) == 2 * 3 + 3 * 6 * (1 + 6) + 3 + 1  # reals, fakes + masks, splits, labels
    assert a["digest"] == b["digest"] == dataset_digest(tmp_path / "b")
    assert c["digest"] != a["digest"]


def test_resume_after_crash_and_no_regeneration(tmp_path, monkeypatch):
    ref = _make(tmp_path / "ref", seed=1)
    calls, real_write = [], mf.write_video_atomic
    def crashing(*a, **k):
        calls.append(a[0])
        if len(calls) == 7: raise KeyboardInterrupt("killed")
        return real_write(*a, **k)
    monkeypatch.setattr(mf, "write_video_atomic", crashing)
    with pytest.raises(KeyboardInterrupt): _make(tmp_path / "x", seed=1)
    monkeypatch.setattr(mf, "write_video_atomic", real_write)
    x = tmp_path / "x"
    assert not (x / "manifest.json").exists() and (x / ".mini_forensics.partial.json").exists()
    assert not [p for p in x.rglob("*") if p.name.endswith((".tmp", ".tmp.mp4"))]  # no half-written files
    before = {p: p.stat().st_mtime_ns for p in x.rglob("*.mp4")}
    m = _make(x, seed=1)
    assert m["digest"] == ref["digest"] and _file_hashes(x) == _file_hashes(tmp_path / "ref")
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished files were not rewritten
    assert not (x / ".mini_forensics.partial.json").exists()
    # a finished set is returned, not regenerated
    mtimes = {p: p.stat().st_mtime_ns for p in x.rglob("*") if p.is_file()}
    assert _make(x, seed=1) == m
    assert {p: p.stat().st_mtime_ns for p in x.rglob("*") if p.is_file()} == mtimes
    # a finished set that lost a file afterwards is completed again, not returned broken
    lost = sorted((x / "manipulated_sequences").rglob("*.png"))[5]
    lost.unlink()
    assert _make(x, seed=1)["digest"] == ref["digest"] and lost.exists()
    # other parameters: an error naming them, or a clean regeneration with overwrite=True
    with pytest.raises(FileExistsError, match=r"other parameters \(n_frames\)"):
        _make(x, seed=1, n_frames=5)
    m5 = _make(x, overwrite=True, seed=1, n_frames=5)
    assert m5["params"]["n_frames"] == 5 and len(read_masks(x, m5["fakes"][0]["method"], m5["fakes"][0]["video"])) == 5


def test_bad_input(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match="nope: extra_faces folder not found"):
        _make(tmp_path / "r", extra_faces=tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown methods"): _make(tmp_path / "r", methods=["Deepfakes"])
    with pytest.raises(ValueError, match="compression"): _make(tmp_path / "r", compression="c99")
    faces = tmp_path / "faces"; (faces / "ann").mkdir(parents=True)
    shutil.copy(shared_data / "faces/test_images_aligned/paul_rudd/1.png", faces / "ann" / "1.png")
    (faces / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (faces / "clip.mp4").write_bytes(b"")
    m = _make(tmp_path / "r", extra_faces=faces)
    assert sorted(Path(s["path"]).name for s in m["skipped"]) == ["broken.jpg", "clip.mp4"]
    assert "ann" in {s["identity"] for s in m["sources"]}


def test_c40_and_methods_subset(tmp_path):
    m = _make(tmp_path / "r", compression="c40", methods=["SelfBlended"])
    rows = _labels(tmp_path / "r")
    assert {r["compression"] for r in rows} == {"c40"} and {r["method"] for r in rows} == {"SelfBlended", MINI_REAL_METHOD}
    assert all("/c40/videos/" in r["path"] for r in rows)
    for f in m["fakes"]:
        a = mf.mask_agreement(tmp_path / "r", f["method"], f["video"], compression="c40")
        assert a["iou"] >= 0.6, a


def test_index_ffpp_reads_it(wide):
    "Later stages run unchanged: deepfake_explain.data.index_ffpp indexes the set (a rename fails here, it is not skipped)."
    from deepfake_explain.data import index_ffpp
    root, m = wide
    df = index_ffpp(root, compression="c23", methods=MINI_METHODS)
    assert len(df) == m["counts"]["real"] + m["counts"]["fake"]
    assert set(df.label) == {0, 1} and set(df.split) == set(MINI_SPLITS)
    assert set(df[df.label == 1].method) == set(MINI_METHODS)
    split_of = {c["id"]: c["split"] for c in m["clips"]}
    for r in df.itertuples(): assert r.split == split_of[r.video.split("_")[0]]


def test_cli_identity_disjoint_variant(tmp_path, shared_data):
    "`deepfake-explain-mini-forensics --disjoint_test_identities`: the test split's people are out of train and val, and it says so."
    import subprocess, sys
    from deepfake_explain.data import identity_disjoint
    run = lambda *a: subprocess.run([sys.executable, "-m", "deepfake_explain.mini_forensics", str(tmp_path / "set"), *a],
                                    capture_output=True, text=True, timeout=300)
    bad = run("--disjoint_test_identities")
    assert bad.returncode == 2 and "--disjoint_test_identities needs --extra_faces" in bad.stderr, bad.stderr
    ok = run("--disjoint_test_identities", "--extra_faces", str(shared_data / "faces" / "test_images"), "--n_frames", "4", "--size", "64",
             "--n_train", "1", "--n_val", "1", "--n_test", "1")
    assert ok.returncode == 0, ok.stderr[-2000:]
    m = json.loads((tmp_path / "set" / "manifest.json").read_text())
    by = {s: {c["identity"] for c in m["clips"] if c["split"] == s} for s in MINI_SPLITS}
    assert m["identity_disjoint"] and not by["test"] & (by["train"] | by["val"]) and m["params"]["disjoint_test_identities"]
    assert identity_disjoint("MINI", manifest=m)["identity_disjoint"] is True and m["identity_statement"] in ok.stdout
