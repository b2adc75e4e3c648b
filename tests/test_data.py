"Integration tests of deepfake_explain.data: real FF++/DFDC samples, bad input, streaming memory, worker determinism."
from __future__ import annotations
import json, os, subprocess, sys, textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_explain.data import (FFPP_METHODS, ORIGINAL, SPLITS, VIDEO_COLUMNS, FaceCropDataset, TrainTransform,
                                   ValTransform, crop_path, index_crops, index_dfdc, index_ffpp, index_videos,
                                   select_training_frames)


def _touch(p: Path, data: bytes = b"\0" * 16) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src, target_is_directory=src.is_dir())
    return dst


# ---------------------------------------------------------------- FaceForensics++ (real samples)
@pytest.mark.parametrize("compression", ["c23", "c40"])
def test_ffpp_official_split_of_every_sample(shared_data, compression):
    root = shared_data / "ffpp"
    labels = pd.read_csv(root / "labels.csv", keep_default_na=False).set_index("path")
    df = index_ffpp(root, compression)
    assert list(df.columns) == VIDEO_COLUMNS
    expected = labels[(labels.compression == compression) & (labels.ffpp_official_split != "")]
    rel = [Path(p).relative_to(os.path.abspath(root)).as_posix() for p in df.path]
    assert sorted(rel) == sorted(expected.index)  # every official sample indexed, nothing else (no actors)
    for r, key in zip(df.itertuples(), rel):
        want = labels.loc[key]
        assert r.split == want.ffpp_official_split, key
        assert r.label == (1 if want.label == "FAKE" else 0), key
        assert r.method == (ORIGINAL if want.method == "original_youtube" else want.method), key
        assert r.compression == compression and r.video == Path(key).stem
        assert r.original == (Path(want.original).stem if want.original else ""), key
        assert Path(r.path).is_file()
    # FaceShifter is absent from the samples: recorded, not silently dropped
    assert [s["reason"] for s in df.attrs["skipped"]] == ["method folder not found (FaceShifter left out)"]


def test_ffpp_c23_covers_all_splits(shared_data):
    df = index_videos(shared_data / "ffpp", "FACEFORENSICS", compression="c23")
    assert set(df.split) == set(SPLITS)
    assert set(df[df.label == 0].split) == set(SPLITS)


def test_ffpp_deepfakedetection_uses_actor_videos(shared_data, tmp_path):
    src = shared_data / "ffpp"
    root = tmp_path / "ffpp"
    _link(src / "splits", root / "splits")
    _link(src / "original_sequences/youtube/c40/videos", root / "original_sequences/youtube/c40/videos")
    _link(src / "original_sequences/actors/c40/videos", root / "original_sequences/actors/c40/videos")
    _link(src / "original_sequences/actors/c40/videos/01__kitchen_pan.mp4",
          root / "manipulated_sequences/DeepFakeDetection/c40/videos/01_02__kitchen_pan__YVGY8LOK.mp4")
    df = index_ffpp(root, "c40", methods=["DeepFakeDetection"], dfd_split="test")
    actors = {p.stem for p in (src / "original_sequences/actors/c40/videos").glob("*.mp4")}
    assert set(df[df.split == "test"].video) == actors | {"01_02__kitchen_pan__YVGY8LOK"}
    fake = df[df.method == "DeepFakeDetection"].iloc[0]
    assert (fake.label, fake.original) == (1, "01__kitchen_pan") and fake.original in actors
    assert set(df[df.split == "train"].method) == {ORIGINAL}  # youtube originals keep their official split
    # on the real samples DeepFakeDetection is absent: asking for it explicitly is an error naming the folder
    with pytest.raises(FileNotFoundError, match="DeepFakeDetection/c40/videos: folder not found"):
        index_ffpp(src, "c40", methods=["DeepFakeDetection"])


# ---------------------------------------------------------------- DFDC
def test_dfdc_labels_from_metadata(shared_data):
    meta = json.loads((shared_data / "dfdc/metadata.json").read_text())
    df = index_videos(shared_data / "dfdc", "DFDC")
    assert {r.video + ".mp4": ("FAKE" if r.label else "REAL") for r in df.itertuples()} == \
           {k: v["label"] for k, v in meta.items()}
    for r in df.itertuples():
        m = meta[r.video + ".mp4"]
        assert r.method == ("DFDC" if m["label"] == "FAKE" else ORIGINAL)
        assert r.original == (Path(m["original"]).stem if m["original"] else "")
        assert r.split == m["split"]
    assert df.attrs["skipped"] == []


def test_dfdc_full_metadata_with_few_videos(shared_data, tmp_path):
    "DFDC's real 400-entry metadata beside the 4 sample videos (2 of them listed): every other case recorded."
    full = json.loads((shared_data / "dfdc/train_sample_videos_metadata_full.json").read_text())
    part = tmp_path / "dfdc_train_part_0"  # a root holding part folders
    _link(shared_data / "dfdc/train_sample_videos_metadata_full.json", part / "metadata.json")
    present = sorted(p.name for p in (shared_data / "dfdc").glob("*.mp4"))
    for n in present: _link(shared_data / "dfdc" / n, part / n)
    df = index_dfdc(tmp_path)
    assert sorted(df.video + ".mp4") == sorted(n for n in present if n in full)
    assert all(("FAKE" if r.label else "REAL") == full[r.video + ".mp4"]["label"] for r in df.itertuples())
    reasons = {Path(s["path"]).name: s["reason"] for s in df.attrs["skipped"]}
    assert reasons == {**{n: "listed in metadata.json but the file is missing" for n in full if n not in present},
                       **{n: "no entry in metadata.json (label unknown)" for n in present if n not in full}}


# ---------------------------------------------------------------- bad input
def _mini_ffpp(root: Path, methods=("Deepfakes", "FaceSwap")) -> Path:
    for s, pairs in dict(train=[["000", "001"]], val=[["002", "003"]], test=[["004", "005"]]).items():
        _touch(root / "splits" / f"{s}.json", json.dumps(pairs).encode())
    for i in ["000", "001", "002", "003", "004", "005"]:
        _touch(root / f"original_sequences/youtube/c23/videos/{i}.mp4")
    for m in methods:
        for v in ["000_001", "001_000", "002_003", "004_005"]:
            _touch(root / f"manipulated_sequences/{m}/c23/videos/{v}.mp4")
    return root


def test_empty_method_folder_is_an_error(tmp_path):
    root = _mini_ffpp(tmp_path / "ffpp")
    for p in (root / "manipulated_sequences/FaceSwap/c23/videos").iterdir(): p.unlink()
    for methods in (None, ["FaceSwap"]):
        with pytest.raises(ValueError, match=r"FaceSwap/c23/videos: no \.mp4 videos"):
            index_ffpp(root, methods=methods)
    assert len(index_ffpp(root, methods=["Deepfakes"])) == 6 + 4


def test_missing_folders_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: FaceForensics"):
        index_ffpp(tmp_path / "nowhere")
    root = _mini_ffpp(tmp_path / "ffpp")
    (root / "splits/test.json").unlink()
    with pytest.raises(FileNotFoundError, match="splits/test.json: file not found"):
        index_ffpp(root)
    with pytest.raises(FileNotFoundError, match="no metadata.json"):
        index_dfdc(root)


def test_zero_byte_and_undecodable_videos_are_skipped(tmp_path):
    root = _mini_ffpp(tmp_path / "ffpp")
    _touch(root / "manipulated_sequences/Deepfakes/c23/videos/002_003.mp4", b"")
    _touch(root / "original_sequences/youtube/c23/videos/004.mp4", b"")
    df = index_ffpp(root, methods=["Deepfakes", "FaceSwap"])
    skipped = {(Path(s["path"]).parts[-4], Path(s["path"]).name): s["reason"] for s in df.attrs["skipped"]}
    assert skipped == {("Deepfakes", "002_003.mp4"): "empty file (0 bytes)",
                       ("youtube", "004.mp4"): "empty file (0 bytes)"}
    assert len(df) == 2 * 4 + 6 - 2
    assert not ((df.method == "Deepfakes") & (df.video == "002_003")).any()
    assert not ((df.method == ORIGINAL) & (df.video == "004")).any()
    # with check_videos the 16-zero-byte placeholders are found to be no videos at all
    with pytest.raises(ValueError, match="no usable DFDC videos"):
        (tmp_path / "d").mkdir()
        _touch(tmp_path / "d/x.mp4")
        (tmp_path / "d/metadata.json").write_text(json.dumps({"x.mp4": {"label": "FAKE"}}))
        index_dfdc(tmp_path / "d", check_videos=True)


def test_dfdc_metadata_without_label_is_skipped(shared_data, tmp_path):
    d = tmp_path / "dfdc"
    videos = sorted((shared_data / "dfdc").glob("*.mp4"))
    for p in videos: _link(p, d / p.name)
    meta = json.loads((shared_data / "dfdc/metadata.json").read_text())
    unlabelled = videos[0].name
    del meta[unlabelled]["label"]
    meta[videos[1].name]["label"] = None
    (d / "metadata.json").write_text(json.dumps(meta))
    df = index_dfdc(d, check_videos=True)  # real videos: they decode
    assert sorted(df.video + ".mp4") == [p.name for p in videos[2:]]
    assert {Path(s["path"]).name: s["reason"] for s in df.attrs["skipped"]} == \
           {videos[0].name: "no label in metadata.json", videos[1].name: "no label in metadata.json"}
    (d / "metadata.json").write_text("{ not json")
    with pytest.raises(ValueError, match="metadata.json: not valid JSON"):
        index_dfdc(d)


# ---------------------------------------------------------------- crops: streaming memory and determinism
def _write_crops(root: Path, n_videos: int, frames: int = 6, size: int = 192) -> Path:
    "n_videos crop folders (half real, half fake) of smooth random images, cheap to write."
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(4):
        img = cv2.resize((rng.random((6, 6, 3)) * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        pngs.append(cv2.imencode(".png", img)[1].tobytes())
    for v in range(n_videos):
        method = ORIGINAL if v % 2 else "Deepfakes"
        for f in range(frames):
            _touch(crop_path(root, "train", method, f"{v:03d}", 10 * f, 0), pngs[(v + f) % 4])
    return root


_MEMORY_PROBE = textwrap.dedent("""
    # Imports once, then measures each (mode, crops folder) in a fresh fork: peak RSS growth (VmHWM reset
    # through /proc/self/clear_refs) and the tracemalloc peak while indexing and iterating the whole set.
    import gc, json, os, sys, traceback, tracemalloc
    import torch
    from deepfake_explain.data import FaceCropDataset, ValTransform, index_crops, read_image_rgb

    def rss_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field): return int(line.split()[1])

    class EagerDataset(torch.utils.data.Dataset):  # the reference's approach: every image in RAM
        def __init__(self, df, transform):
            self.images = [read_image_rgb(p) for p in df.path]; self.labels = df.label.tolist(); self.t = transform
        def __len__(self): return len(self.images)
        def __getitem__(self, i):
            return torch.from_numpy(self.t(self.images[i]).transpose(2, 0, 1).copy()).float(), float(self.labels[i])

    def measure(mode, root):
        gc.collect()
        before = rss_kib("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f: f.write("5")   # reset the peak RSS (VmHWM)
        tracemalloc.start()
        df = index_crops(root)
        ds = (FaceCropDataset if mode == "lazy" else EagerDataset)(df, ValTransform(128))
        n = 0
        for x, y in torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=0):
            n += len(x)
        assert n == len(df)
        return dict(mode=mode, n=n, traced_peak_kib=tracemalloc.get_traced_memory()[1] // 1024,
                    rss_peak_growth_kib=rss_kib("VmHWM:") - before)

    specs = [a.split(":", 1) for a in sys.argv[1:]]
    warm = FaceCropDataset(index_crops(specs[0][1]).head(4), ValTransform(128))  # lazy inits before forking
    for _ in torch.utils.data.DataLoader(warm, batch_size=4): pass
    results = []
    for mode, root in specs:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try: os.write(w, json.dumps(measure(mode, root)).encode())
            except BaseException: traceback.print_exc()
            finally: os._exit(0)
        os.close(w)
        with os.fdopen(r) as f: results.append(json.loads(f.read()))
        os.waitpid(pid, 0)
    print(json.dumps(results))
""")


def _probe(*specs: tuple[str, Path]) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, *(f"{m}:{r}" for m, r in specs)], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_dataset_memory_does_not_grow_with_videos(tmp_path):
    small, large = _write_crops(tmp_path / "c10", 10), _write_crops(tmp_path / "c100", 100)
    res = _probe(("lazy", small), ("lazy", large), ("eager", small), ("eager", large))
    lazy, eager = dict(zip((10, 100), res[:2])), dict(zip((10, 100), res[2:]))
    assert (lazy[10]["n"], lazy[100]["n"]) == (60, 600)
    image_mib = 90 * 6 * 192 * 192 * 3 / 2**20  # what 90 more videos' crops weigh in RAM: ~59 MiB
    grow = lambda r, k: (r[100][k] - r[10][k]) / 1024
    # the probe can see the growth: the reference's eager loading grows by about the images' size...
    assert grow(eager, "traced_peak_kib") > 0.8 * image_mib, eager
    assert grow(eager, "rss_peak_growth_kib") > 0.5 * image_mib, eager
    # ...while streaming stays flat (the index itself grows by a few hundred bytes per crop)
    assert grow(lazy, "traced_peak_kib") < 0.1 * image_mib, lazy
    assert grow(lazy, "rss_peak_growth_kib") < 0.25 * image_mib, lazy


def test_augmentations_identical_for_any_number_of_workers(tmp_path):
    crops = index_crops(_write_crops(tmp_path / "c", 6, frames=4, size=48))
    sel = select_training_frames(crops, frames_per_video=4, rebalancing_fake=0.5)
    assert len(sel) == 3 * 4 + 3 * 2
    ds = FaceCropDataset(sel, TrainTransform(32), seed=7, return_index=True)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        batches[workers] = [b for b in loader]
    for (x0, y0, i0), (x2, y2, i2) in zip(batches[0], batches[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and torch.equal(i0, i2)
    assert x0.shape[1:] == (3, 32, 32) and x0.dtype == torch.float32 and 0 <= x0.min() and x0.max() <= 255
    ds.set_epoch(1)
    assert not torch.equal(torch.stack([ds[i][0] for i in range(4)]), batches[0][0][0])


# ---------------------------------------------------------------- the generated demo set (00a_mini_forensics)
def test_mini_forensics_index_matches_its_labels(tmp_path):
    mf = pytest.importorskip("deepfake_explain.mini_forensics")
    root = tmp_path / "mini"
    mf.make_mini_forensics(root, mf.MiniSpec(n_pairs=(1, 1, 1), n_frames=2, size=64), progress=False)
    labels = pd.read_csv(root / "labels.csv", keep_default_na=False).set_index("path")
    df = index_videos(root, "mini")
    assert df.attrs["skipped"] == [] and len(df) == len(labels)
    assert set(df.split) == set(SPLITS)
    for r in df.itertuples():
        want = labels.loc[Path(r.path).relative_to(root).as_posix()]
        assert (r.split, r.label) == (want.ffpp_official_split, int(want.label == "FAKE"))
        assert r.method == (ORIGINAL if want.label == "REAL" else want.method)


def test_synthetic_crops_fixture(tmp_path):
    from fixtures_crops import synthetic_crops
    sc = index_crops(synthetic_crops(tmp_path, n_videos=4, n_frames=2, size=8))
    assert len(sc) == 2 * 4 * 2 and sorted(sc.label.unique()) == [0, 1]
    assert sc.groupby("split").video.nunique().to_dict() == {"train": 4, "val": 4}
