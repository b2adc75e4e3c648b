"""Hostile input at every stage (issue 10): each test feeds one kind of bad input and asserts a clear error naming
the file and the problem, or a recorded skip, and that what was already produced is kept.

Covered elsewhere (see FAULTS.md): zero-byte / random-bytes / truncated / face-less videos and SIGKILL of the
detector (tests/test_preprocess.py), SIGKILL of training (tests/test_train.py), bad dataset layouts and
metadata (tests/test_data.py), corrupt videos at prediction time (tests/test_predict.py).

Everything is generated under tmp_path; the one real input is ../shared/data/faces/real_face_video.mp4, from which
a few 640x360 frames are re-encoded into short clips. Tiny models, one torch thread: well under 3 minutes on 2 cores."""
from __future__ import annotations
import json, os, pickle, subprocess, sys, textwrap, zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from deepfake_explain.core import (ImageReadError, Runtime, read_image_rgb, write_bytes_atomic, write_json_atomic,
                                   write_png_atomic)
from deepfake_explain.data import FaceCropDataset, TrainTransform, ValTransform, crop_path, index_crops, read_json_file, video_row
from deepfake_explain.model import ConfigError, build_model, default_config, load_config, make_efficientnet
from deepfake_explain.preprocess import (DONE_MARKER, DetectOptions, FaceDetector, boxes_path, crop_dataset, crop_face, detect_dataset,
                                         read_boxes, read_frames, shard_videos, square_box, write_boxes)
from deepfake_explain.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, CheckpointMismatchError, load_detector,
                                         load_train_config, load_weights, read_checkpoint)
from deepfake_explain.core import Runtime
from deepfake_explain.train import TrainOptions, train
from deepfake_explain import evaluate as ev
from deepfake_explain.study import load_params, run_study
from conftest import TINY  # the small detector shared by the tests

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ODD = "dossier à espaces/データ 1"  # a folder name with a space and non-ASCII characters
TINY_SEED = {"model": {"layout": "seed", "image-size": 64, "patch-size": 2, "emb-dim": 4, "depth": 1, "heads": 1,
                       "dim-head": 8, "mlp-dim": 16}}
FACE_BOX = [96.6, 237.0, 125.7, 279.1, 1.0]  # MTCNN's box of the face in frame 0 of the 640x360 clip


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


def _write_clip(path: Path, frames: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, frames[0].shape[1::-1])
    for f in frames: w.write(f)
    w.release()
    assert path.stat().st_size > 0
    return path


@pytest.fixture(scope="module")
def clips(shared_data, tmp_path_factory) -> dict:
    "A 6-frame and a 1-frame 640x360 clip (BGR frames re-encoded) of the real face video."
    cap = cv2.VideoCapture(str(shared_data / "faces" / "real_face_video.mp4"))
    frames = []
    for _ in range(6):
        ok, f = cap.read(); assert ok
        frames.append(cv2.resize(f, (640, 360), interpolation=cv2.INTER_AREA))
    cap.release()
    d = tmp_path_factory.mktemp("clips")
    return dict(six=_write_clip(d / "six.mp4", frames), one=_write_clip(d / "one.mp4", frames[:1]))


def _tmp_files(root: Path) -> list:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------ images / crops
def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img); assert ok
    return buf.tobytes()


def test_undecodable_png_is_named(tmp_path):
    good = _png(np.full((8, 8, 3), 90, np.uint8))
    bad = {"text.png": b"these are notes, not pixels\n" * 4, "empty.png": b"", "truncated.png": good[: len(good) // 2]}
    for name, data in bad.items(): (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.png").mkdir()
    for name in [*bad, "folder.png"]:
        with pytest.raises(ImageReadError, match=f"{tmp_path / name}: "):
            read_image_rgb(tmp_path / name)
    df = pd.DataFrame(dict(path=[str(tmp_path / "text.png")], label=[1]))
    with pytest.raises(ImageReadError, match=r"text\.png: not a decodable image"):
        FaceCropDataset(df, ValTransform(32))[0]


def _gray_alpha_png(v: int, a: int) -> bytes:
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.fromarray(np.stack([np.full((5, 7), v, np.uint8), np.full((5, 7), a, np.uint8)], -1), "LA").save(buf, "PNG")
    return buf.getvalue()


def _palette_png(rgb) -> bytes:
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), rgb, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "PNG")
    return buf.getvalue()


# (name, PNG bytes, expected RGB of every pixel, expected (H, W)); colours in RGB order, OpenCV writes BGR(A)
ODD_PNGS = [
    ("gray8", lambda: _png(np.full((5, 7), 77, np.uint8)), (77, 77, 77), (5, 7)),
    ("gray16", lambda: _png(np.full((5, 7), 257 * 200, np.uint16)), (200, 200, 200), (5, 7)),
    ("rgb16", lambda: _png(np.full((5, 7, 3), (257 * 30, 257 * 20, 257 * 10), np.uint16)), (10, 20, 30), (5, 7)),
    ("rgba8", lambda: _png(np.full((5, 7, 4), (30, 20, 10, 128), np.uint8)), (10, 20, 30), (5, 7)),
    ("rgba16", lambda: _png(np.full((5, 7, 4), (257 * 30, 257 * 20, 257 * 10, 65535), np.uint16)), (10, 20, 30), (5, 7)),
    ("gray_alpha", lambda: _gray_alpha_png(150, 40), (150, 150, 150), (5, 7)),
    ("palette", lambda: _palette_png((200, 50, 10)), (200, 50, 10), (5, 7)),
    ("one_pixel", lambda: _png(np.array([[[30, 20, 10]]], np.uint8)), (10, 20, 30), (1, 1)),
]


@pytest.mark.parametrize("name,make,rgb,hw", ODD_PNGS, ids=[p[0] for p in ODD_PNGS])
def test_odd_png_crops_read_as_rgb(tmp_path, name, make, rgb, hw):
    p = tmp_path / ODD / f"{name}.png"
    write_bytes_atomic(p, make())
    img = read_image_rgb(p)
    assert img.dtype == np.uint8 and img.shape == (*hw, 3)
    assert (img == np.array(rgb, np.uint8)).all(), img[0, 0]
    df = pd.DataFrame(dict(path=[str(p)], label=[0]))
    for tf in (ValTransform(32), TrainTransform(32, seed=1)):
        for i in range(3):  # several epochs: several augmentation draws
            ds = FaceCropDataset(df, tf, seed=i)
            x, y = ds[0]
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0 <= float(x.min()) <= float(x.max()) <= 255
            assert float(y) == 0.0


def _hostile_crop_folder(root: Path) -> dict:
    "Crops of one real and one fake video (odd formats), plus a text file named .png, a 0-byte crop and a stray file."
    rng = np.random.default_rng(0)
    good = {}
    for method, video in (("Original", "vidéo réelle 1"), ("Deepfakes", "faux à 2")):
        for f in range(4):
            p = crop_path(root, "test", method, video, f, 0)
            img = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            data = [_png(img), _png(img[..., 0]), _png(img.astype(np.uint16) * 257), _png(np.dstack([img, img[..., :1]]))][f]
            write_bytes_atomic(p, data); good[str(p)] = f
    text = crop_path(root, "test", "Deepfakes", "faux à 2", 9, 0); text.write_text("not an image at all\n")
    empty = crop_path(root, "test", "Original", "vidéo réelle 1", 9, 0); empty.write_bytes(b"")
    stray = text.parent / "notes.txt"; stray.write_text("x")
    return dict(good=good, text=text, empty=empty, stray=stray)


def _tiny_checkpoint(path: Path, cfg=TINY, seed: int = 0, training: bool = True) -> torch.nn.Module:
    cfg = load_config(cfg)
    torch.manual_seed(seed)
    net = build_model(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "model": net.state_dict(), "config": cfg, "meta": {"layout": net.layout}}
               if training else net.state_dict(), path)
    return net.eval()


def test_hostile_crop_folder_is_indexed_and_scored_with_skips(tmp_path):
    root = tmp_path / ODD / "crops"
    f = _hostile_crop_folder(root)
    crops = index_crops(root)
    skipped = {s["path"]: s["reason"] for s in crops.attrs["skipped"]}
    assert skipped == {str(f["empty"]): "empty file (0 bytes)", str(f["stray"]): "not a <frame>_<face>.png crop"}
    assert sorted(crops.path) == sorted([*f["good"], str(f["text"])])  # the text file looks like a crop by name
    assert set(crops.video) == {"vidéo réelle 1", "faux à 2"}
    # scoring: the undecodable crop is a recorded skip naming it, every other crop gets a score
    net = _tiny_checkpoint(tmp_path / "ckpt dir é" / "tiny.pt")
    frames = ev.score_frames(net, crops, ev.ScoreOptions(frames_per_video=0, batch_size=3, progress=False), image_size=64)
    assert sorted(frames.path) == sorted(f["good"]) and frames.score.between(0, 1).all()
    why = {s["path"]: s["reason"] for s in frames.attrs["skipped"]}
    assert str(f["text"]) in why and f"{f['text']}: not a decodable image" in why[str(f["text"])]
    # the whole test stage: report written, the skip listed in metrics.json
    m = ev.test_checkpoint(tmp_path / "ckpt dir é" / "tiny.pt", None, root, tmp_path / ODD / "out",
                           ev.TestOptions(scoring=ev.ScoreOptions(frames_per_video=0, batch_size=4, progress=False), n_boot=10), Runtime("cpu"))
    assert m["n_videos"] == 2 and m["n_fake"] == 1 and m["n_real"] == 1
    saved = json.loads((tmp_path / ODD / "out" / "test" / "metrics.json").read_text(encoding="utf-8"))
    assert any(d["path"] == str(f["text"]) and "not a decodable image" in d["reason"] for d in saved["skipped"])
    assert not _tmp_files(tmp_path)


# ------------------------------------------------------------------------------------------------ boxes / cropping
BAD_BOXES = {  # (x0, y0, x1, y1, prob) in a 360 x 640 frame
    "outside": [5000, 5000, 5100, 5100, 0.9],
    "negative": [-50, -40, -10, -5, 0.9],
    "straddling": [600, 330, 700, 420, 0.9],
    "larger_than_frame": [-1000, -1000, 3000, 3000, 0.9],
    "zero_size": [100, 100, 100, 100, 0.9],
    "inverted": [125.7, 279.1, 96.6, 237.0, 0.9],
}


OUTSIDE_BOXES = ("outside", "negative")  # no overlap with the frame: refused


@pytest.mark.parametrize("kind", [k for k in BAD_BOXES if k not in OUTSIDE_BOXES])
def test_bad_box_square_stays_inside_the_frame(kind):
    H, W = 360, 640
    frame = np.arange(H * W * 3, dtype=np.uint32).reshape(H, W, 3).astype(np.uint8)
    for margin in (0.0, 0.3, 5.0):
        x0, y0, x1, y1 = square_box(BAD_BOXES[kind], (H, W), margin)
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H and x1 - x0 == y1 - y0, (kind, margin, (x0, y0, x1, y1))
        c = crop_face(frame, BAD_BOXES[kind], margin)
        assert c.shape == (y1 - y0, x1 - x0, 3) and c.size > 0


def test_inverted_box_is_refused_or_normalised():
    H, W = 360, 640
    inv, norm = BAD_BOXES["inverted"], [96.6, 237.0, 125.7, 279.1, 0.9]
    try: got = square_box(inv, (H, W))
    except ValueError as e:
        assert "box" in str(e); return
    assert got == square_box(norm, (H, W))


@pytest.mark.parametrize("kind", OUTSIDE_BOXES)
def test_box_without_overlap_is_refused(kind):
    # was a bug (session 1, strict xfail): the box was clamped to the frame's corner and background was cropped
    with pytest.raises(ValueError, match="wholly outside the 640x360 frame"):
        square_box(BAD_BOXES[kind], (360, 640))


def _crop_row(video: str, path: Path):
    return next(pd.DataFrame([video_row(path, "test", "Deepfakes", 1)]).itertuples())


def test_crop_dataset_with_bad_boxes_files(clips, tmp_path):
    vids, out, crops = tmp_path / ODD / "videos", tmp_path / "boxes root", tmp_path / "crops é"
    vids.mkdir(parents=True)
    rows, boxes = [], {}
    plan = {**{f"box {k}": {0: [v]} for k, v in BAD_BOXES.items()},            # cropped inside the frame, or refused (OUTSIDE_BOXES)
            "good": {0: [FACE_BOX], 3: [FACE_BOX]},
            "nan box": {0: [[float("nan")] * 4 + [0.9]]},                       # failed: recorded
            "text coords": {0: [["a", "b", "c", "d", 0.9]]},
            "frame past the end": {0: [FACE_BOX], 99: [FACE_BOX]},
            "no face at all": {0: None, 3: [None]}}
    for name, b in plan.items():
        (vids / f"{name}.mp4").symlink_to(clips["six"])
        rows.append(video_row(vids / f"{name}.mp4", "test", "Deepfakes", 1))
        write_boxes(boxes_path(out, name, "Deepfakes"), b)
    (vids / "malformed.mp4").symlink_to(clips["six"])
    rows.append(video_row(vids / "malformed.mp4", "test", "Deepfakes", 1))
    write_bytes_atomic(boxes_path(out, "malformed", "Deepfakes"), b'{"0": [[1, 2, 3')
    (vids / "no boxes.mp4").symlink_to(clips["six"])
    rows.append(video_row(vids / "no boxes.mp4", "test", "Deepfakes", 1))
    videos = pd.DataFrame(rows)

    s = crop_dataset(videos, out, crops, num_workers=0, progress=False).set_index("video")
    failed = {"nan box", "text coords", "frame past the end", "no face at all", "malformed", "no boxes",
              *(f"box {k}" for k in OUTSIDE_BOXES)}
    assert s.status.to_dict() == {v: "failed" if v in failed else "done" for v in s.index}
    log = pd.read_csv(crops / "failures.csv").set_index("path")
    assert set(log.index) == {str(vids / f"{v}.mp4") for v in failed} and (log.stage == "crop").all()
    err = lambda v: log.error[str(vids / f"{v}.mp4")]
    assert "NaN" in err("nan box") and "could not convert string to float" in err("text coords")
    assert "frame 99 not decodable" in err("frame past the end") and str(vids / "frame past the end.mp4") in err("frame past the end")
    assert f"{boxes_path(out, 'malformed', 'Deepfakes')}: not a readable boxes JSON" in err("malformed")
    assert "no face in any frame" in err("no face at all")
    assert "no boxes file" in err("no boxes")
    for k in OUTSIDE_BOXES:
        assert f"{boxes_path(out, f'box {k}', 'Deepfakes')}: frame 0, face 0: box" in err(f"box {k}") and "wholly outside" in err(f"box {k}")
        assert not crop_path(crops, "test", "Deepfakes", f"box {k}", 0, 0).parent.exists() or \
            not any(crop_path(crops, "test", "Deepfakes", f"box {k}", 0, 0).parent.glob("*.png"))
    # every crop that was written is square, inside the frame, non-empty; done videos have their marker
    done = {}
    for v in s.index[s.status == "done"]:
        folder = crop_path(crops, "test", "Deepfakes", v, 0, 0).parent
        pngs = sorted(folder.glob("*.png"))
        assert (folder / DONE_MARKER).exists() and len(pngs) == len(plan[v])
        for p in pngs:
            img = read_image_rgb(p)
            assert img.shape[0] == img.shape[1] >= 1 and img.shape[0] <= 360
            done[p] = p.stat().st_mtime_ns
    assert len(done) == len(BAD_BOXES) - len(OUTSIDE_BOXES) + 2
    # a second run: finished videos untouched, failures still recorded, nothing half-written
    again = crop_dataset(videos, out, crops, num_workers=0, progress=False).set_index("video")
    assert (again.status[list(failed)] == "failed").all() and (again.status.drop(list(failed)) == "skipped").all()
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())
    assert set(pd.read_csv(crops / "failures.csv").path) == set(log.index)
    assert not _tmp_files(tmp_path)


# ------------------------------------------------------------------------------------------------ a video of one frame
def test_one_frame_video_through_detection_and_crops(clips, tmp_path):
    p = tmp_path / ODD / "une image.mp4"
    p.parent.mkdir(parents=True); p.symlink_to(clips["one"])
    for kw in (dict(frames_per_video=30), dict(frames_per_video=0, every_n=5), dict(frames_per_video=1)):
        idx, frames = read_frames(p, **kw)
        assert idx == [0] and frames[0].shape == (360, 640, 3), kw
    videos = pd.DataFrame([video_row(p, "val", "Original", 0)])
    out, crops = tmp_path / "out", tmp_path / "crops"
    s = detect_dataset(videos, out, opts=DetectOptions(frames_per_video=30, num_workers=0), runtime=Runtime("cpu", threads=1),
                       progress=False)
    assert s.status.tolist() == ["done"] and s.frames.tolist() == [1] and s.faces_in.tolist() == [1]
    boxes = read_boxes(boxes_path(out, "une image", "Original"))
    assert list(boxes) == [0] and len(boxes[0]) == 1
    c = crop_dataset(videos, out, crops, num_workers=0, progress=False)
    assert c.status.tolist() == ["done"] and c.crops.tolist() == [1]
    img = read_image_rgb(crop_path(crops, "val", "Original", "une image", 0, 0))
    assert img.shape[0] == img.shape[1] >= 20
    assert not (out / "boxes" / "failures.csv").exists() and not (crops / "failures.csv").exists()


# ------------------------------------------------------------------------------------------------ YAML configs
LOADERS = {"model.load_config": load_config, "checkpoint.load_train_config": load_train_config}


def _yaml(tmp_path, text: str, name: str = "my config.yaml") -> Path:
    p = tmp_path / ODD / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


@pytest.mark.parametrize("loader", list(LOADERS))
def test_config_typo_key_and_section(tmp_path, loader):
    p = _yaml(tmp_path, "model:\n  image-szie: 64\ntraning:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e: LOADERS[loader](p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: invalid config")
    assert "unknown key 'model.image-szie' (did you mean 'model.image-size'?)" in msg
    assert "unknown section 'traning' (did you mean 'training'?)" in msg


WRONG_TYPES = [("training:\n  lr: fast\n", "'training.lr' = 'fast': expected float, got str"),
               ("training:\n  bs: 16.5\n", "'training.bs' = 16.5: expected int, got float"),
               ("model:\n  image-size: '64'\n", "'model.image-size' = '64': expected int, got str"),
               ("model:\n  layout: diagonal\n", "'model.layout' = 'diagonal': must be one of ['spatial', 'seed']"),
               ("model:\n  dropout: true\n", "'model.dropout' = True: expected float, got bool"),
               ("training:\n  weight-decay: 1e-7\n", "write floats with a dot")]


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("text,expected", WRONG_TYPES, ids=[t.split(":")[1].strip() for t, _ in WRONG_TYPES])
def test_config_wrong_type_names_key_and_file(tmp_path, loader, text, expected):
    p = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=r"^" + __import__("re").escape(str(p)) + ": invalid config") as e:
        LOADERS[loader](p)
    assert expected in str(e.value)


def test_train_only_key_types(tmp_path):
    p = _yaml(tmp_path, "training:\n  augment: 'yes'\n  optimizer: adam\n")
    with pytest.raises(ConfigError) as e: load_train_config(p)
    assert "'training.augment' = 'yes': expected bool, got str" in str(e.value)
    assert "'training.optimizer' = 'adam': must be one of ['sgd', 'adamw']" in str(e.value)
    with pytest.raises(ConfigError, match="unknown key 'training.augment'"):  # the model's own schema does not know it
        load_config(p)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_config_missing_section_takes_the_defaults(tmp_path, loader):
    p = _yaml(tmp_path, "model:\n  image-size: 64\n")  # no training, no spatial section
    cfg = LOADERS[loader](p)
    defaults = LOADERS[loader](_yaml(tmp_path, "", "empty.yaml"))
    assert cfg["model"]["image-size"] == 64 and cfg["spatial"] == defaults["spatial"] == default_config()["spatial"]
    assert cfg["training"] == defaults["training"]
    p = _yaml(tmp_path, "model:\n  - image-size\n  - 64\n", "list.yaml")
    with pytest.raises(ConfigError, match=r"list\.yaml: invalid config:\n  - section 'model' must be a mapping, got list"):
        LOADERS[loader](p)
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        LOADERS[loader](_yaml(tmp_path, "model: {image-size: 64\n", "broken.yaml"))
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read config"):
        LOADERS[loader](tmp_path / "absent.yaml")


@pytest.mark.parametrize("value", ["[]", "0", "false", "''"])
def test_config_falsy_section_of_wrong_type_is_refused(tmp_path, value):
    p = _yaml(tmp_path, f"model: {value}\n")
    with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
        load_train_config(p)


def test_config_that_is_not_text_names_the_file(tmp_path):
    p = tmp_path / ODD / "best.pt"
    _tiny_checkpoint(p)
    with pytest.raises(ConfigError, match=f"{p}: "):
        load_train_config(p)


def test_study_params_that_are_not_text_name_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_bytes(b"\x80\x03}q\x00(X\x05\x00\x00\x00model\xff\xfe")
    with pytest.raises(ValueError, match=f"{p}: "):
        load_params(p, base=tmp_path)


def test_study_params_with_a_typo_are_refused_before_anything_runs(tmp_path):
    # was a gap (session 1): papermill passed an unknown name along and the stage silently used its default
    p = tmp_path / ODD / "params.yaml"
    p.parent.mkdir(parents=True)
    p.write_text("dataset: mini\nnum_epoch: 3\nfames_per_video: 4\n")
    with pytest.raises(ValueError) as e: run_study(p, output=tmp_path / "run")
    msg = str(e.value)
    assert msg.startswith(f"{p}: unknown study parameter(s)")
    assert "'fames_per_video' (did you mean 'frames_per_video'?)" in msg and "'num_epoch' (did you mean 'num_epochs'?)" in msg
    assert not (tmp_path / "run").exists()


def test_checkpoint_with_invalid_stored_config_names_the_checkpoint(tmp_path):
    p = tmp_path / "old run" / "best.pt"
    _tiny_checkpoint(p)
    ck = torch.load(p, weights_only=True)
    ck["config"]["model"]["image-szie"] = 64  # e.g. a key renamed since this checkpoint was written
    torch.save(ck, p)
    with pytest.raises(ConfigError) as e: load_detector(p)
    assert "unknown key 'model.image-szie'" in str(e.value)
    assert str(p) in str(e.value)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_of_the_other_layout_names_the_keys(tmp_path):
    spatial = _tiny_checkpoint(tmp_path / "spatial.pt", training=False)
    seed = _tiny_checkpoint(tmp_path / "seed.pt", TINY_SEED, training=False)
    _tiny_checkpoint(tmp_path / "spatial_train.pt")
    seed_model, spatial_model = build_model(TINY_SEED), build_model(TINY)
    # checkpoint.load_weights: names the file, the layout it comes from (the config key to set) and the keys
    with pytest.raises(CheckpointMismatchError) as e: load_weights(seed_model, tmp_path / "spatial.pt")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'spatial.pt'}: checkpoint has layout 'spatial', the model has layout 'seed'")
    assert "(set 'model.layout: spatial' in the config)" in msg
    assert "2 unexpected keys: feature_to_embedding.weight, feature_to_embedding.bias" in msg and "missing keys: " in msg
    with pytest.raises(CheckpointMismatchError) as e: load_weights(spatial_model, tmp_path / "seed.pt")
    assert "(set 'model.layout: seed' in the config)" in str(e.value)
    assert "2 missing keys: feature_to_embedding.weight, feature_to_embedding.bias" in str(e.value)
    # checkpoint.load_detector (config of the other layout than the stored weights)
    with pytest.raises(CheckpointMismatchError) as e: load_detector(tmp_path / "spatial_train.pt", TINY_SEED)
    assert "spatial_train.pt: checkpoint has layout 'spatial', the model has layout 'seed'" in str(e.value)
    assert "shape-mismatched keys: pos_embedding" in str(e.value)
    # the model it was refused for is unchanged (nothing half-loaded)
    fresh = build_model(TINY)
    torch.manual_seed(5); target = build_model(TINY); before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError): load_weights(target, tmp_path / "seed.pt")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    assert load_weights(fresh, tmp_path / "spatial.pt")["kind"] == "state_dict"  # the right pair loads
    assert all(torch.equal(spatial.state_dict()[k], v) for k, v in fresh.state_dict().items())
    del seed


class _RunsCode:
    "Unpickling this object runs a shell command that creates `marker`."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f"touch '{self.marker}'",))


def _evil_files(d: Path, marker: Path) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "model": {"w": torch.zeros(2)}, "config": TINY, "x": _RunsCode(marker)}
    torch.save(payload, d / "zip checkpoint.pt")                    # torch's zip format, data.pkl carries the code
    with open(d / "plain pickle.pt", "wb") as f: pickle.dump(payload, f, protocol=2)  # a legacy (non-zip) pickle
    torch.save(_RunsCode(marker), d / "bare object.pt")
    return {p.name: p for p in d.iterdir()}


def test_payload_is_live_without_weights_only(tmp_path):
    "The control: the same files do run their code when loaded the unsafe way (so the refusals below mean something)."
    marker = tmp_path / "control marker"
    for name, p in _evil_files(tmp_path / "ck", marker).items():
        marker.unlink(missing_ok=True)
        loader = pickle.load if name == "plain pickle.pt" else (lambda f: torch.load(f, weights_only=False))
        with open(p, "rb") as f: loader(f)
        assert marker.exists(), name


CKPT_LOADERS = {
    "model.backbone-weights": lambda p: make_efficientnet("efficientnet-b0", weights=p, image_size=64),
    "checkpoint.read_checkpoint": read_checkpoint,
    "checkpoint.load_weights": lambda p: load_weights(build_model(TINY), p),
    "train.train(resume=)": lambda p: train(TINY, p.parent / "no crops", p.parent / "run",
                                            TrainOptions(num_epochs=1, workers=0, progress=False), Runtime("cpu"), resume=p),
    "checkpoint.load_detector": load_detector,
    "checkpoint.load_detector(config)": lambda p: load_detector(p, TINY),
}


@pytest.mark.parametrize("loader", list(CKPT_LOADERS))
def test_pickle_carrying_code_is_refused(tmp_path, loader):
    marker = tmp_path / "PWNED"
    for name, p in _evil_files(tmp_path / ODD, marker).items():
        with pytest.raises((CheckpointError, ValueError)) as e: CKPT_LOADERS[loader](p)
        assert str(p) in str(e.value), (name, str(e.value)[:300])
        assert "weights" in str(e.value).lower() or "unpickl" in str(e.value).lower(), str(e.value)[:300]
        assert not marker.exists(), f"{loader} ran the code in {name}"
    assert not (tmp_path / ODD / "run").exists()  # train refused before writing anything


# ------------------------------------------------------------------------------------------------ odd paths
def test_paths_with_spaces_and_non_ascii(clips, tmp_path):
    d = tmp_path / ODD / "ñandú — 結果"
    obj = {"vidéo": "ok", "n": [1, 2]}
    assert read_json_file(write_json_atomic(d / "données.json", obj)) == obj
    img = np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    assert np.array_equal(read_image_rgb(write_png_atomic(d / "visage é.png", img)), img)
    boxes = {0: [FACE_BOX], 3: None}
    assert read_boxes(write_boxes(d / "boîtes 1.json", boxes)) == boxes
    # videos: read through a link whose name and folder are odd
    v = d / "clip à 1.mp4"; v.symlink_to(clips["six"])
    idx, frames = read_frames(v, frames_per_video=3)
    assert idx == [0, 2, 4] and len(frames) == 3
    # the crop layout with odd video names, indexed and read back
    root = d / "crops"
    for name in ("vidéo 1", "テスト 2"):
        write_png_atomic(crop_path(root, "train", "Deepfakes", name, 5, 0), img)
    crops = index_crops(root)
    assert sorted(crops.video) == ["vidéo 1", "テスト 2"] and not crops.attrs["skipped"]
    x, y = FaceCropDataset(crops, ValTransform(16))[1]
    assert x.shape == (3, 16, 16) and float(y) == 1.0
    assert not _tmp_files(tmp_path)


# ------------------------------------------------------------------------------------------------ concurrent shards
SHARD_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
import pandas as pd
from deepfake_explain.core import Runtime
from deepfake_explain.preprocess import DetectOptions, FaceDetector, crop_dataset, detect_dataset
k, root = sys.argv[1], Path(sys.argv[2])
videos = pd.read_csv(root / "videos.csv", keep_default_na=False, dtype={"video": str})
det = FaceDetector(device="cpu", batch_size=4)
(root / f"ready_{k}").touch()
t0 = time.time()
while not all((root / f"ready_{i}").exists() for i in (0, 1)) and time.time() - t0 < 120: time.sleep(0.01)
s = detect_dataset(videos, root / "out", "FACEFORENSICS", DetectOptions(frames_per_video=2, num_workers=0),
                   Runtime("cpu", threads=1), detector=det, shard=f"{k}/2", progress=False)
c = crop_dataset(videos, root / "out", root / "crops", "FACEFORENSICS", num_workers=0, shard=f"{k}/2", progress=False)
s.to_csv(root / f"detect_{k}.csv", index=False); c.to_csv(root / f"crops_{k}.csv", index=False)
"""


def _names_per_shard(n_good: int = 2, n_bad: int = 1) -> dict:
    "Odd video names, `n_good` good and `n_bad` bad ones in each of the 2 shards."
    want = {(k, bad): (n_bad if bad else n_good) for k in (0, 1) for bad in (False, True)}
    picked = {key: [] for key in want}
    for i in range(200):
        bad = i % 2 == 1
        name = f"{'cassé' if bad else 'clip'} é {i}"
        k = zlib.crc32(f"Original/{name}".encode()) % 2
        if len(picked[(k, bad)]) < want[(k, bad)]: picked[(k, bad)].append(name)
    assert all(len(picked[key]) == want[key] for key in want)
    return picked


def test_two_shards_in_one_output_tree(clips, tmp_path):
    root = tmp_path / ODD
    vids = root / "videos"; vids.mkdir(parents=True)
    picked, rows = _names_per_shard(), []
    for (k, bad), names in picked.items():
        for n in names:
            p = vids / f"{n}.mp4"
            if bad: p.write_bytes(np.random.default_rng(k).bytes(50_000))
            else: p.symlink_to(clips["six"])
            rows.append(video_row(p, "train", "Original", 0))
    videos = pd.DataFrame(rows)
    for k in (0, 1):  # the test's own split agrees with the library's
        assert sorted(shard_videos(videos, f"{k}/2").video) == sorted(picked[(k, False)] + picked[(k, True)])
    videos.to_csv(root / "videos.csv", index=False)
    script = tmp_path / "shard.py"; script.write_text(SHARD_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), str(k), str(root)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    good = sorted(picked[(0, False)] + picked[(1, False)])
    bad = {k: picked[(k, True)] for k in (0, 1)}
    # every good video has exactly one boxes JSON, in the one boxes tree
    jsons = sorted(p.relative_to(root / "out" / "boxes") for p in (root / "out" / "boxes").rglob("*.json"))
    assert jsons == sorted(Path("Original") / f"{n}.json" for n in good)
    for n in good: assert read_boxes(boxes_path(root / "out", n, "Original"))[0]
    # each shard wrote its own failures files, holding its own bad video only
    for sub in ("out/boxes", "crops"):
        assert not (root / sub / "failures.csv").exists()
        for k in (0, 1):
            f = pd.read_csv(root / sub / f"failures_{k}of2.csv")
            assert sorted(f.path) == sorted(str(vids / f"{n}.mp4") for n in bad[k]), (sub, k, f)
    for k in (0, 1):
        d = pd.read_csv(root / f"detect_{k}.csv", dtype={"video": str}).set_index("video")
        assert d.status.to_dict() == {**{n: "done" for n in picked[(k, False)]}, **{n: "failed" for n in bad[k]}}
    # crops of every good video, done markers, and no temp file anywhere
    for n in good:
        folder = crop_path(root / "crops", "train", "Original", n, 0, 0).parent
        assert (folder / DONE_MARKER).exists() and len(list(folder.glob("*.png"))) == 2
    assert not _tmp_files(root)
