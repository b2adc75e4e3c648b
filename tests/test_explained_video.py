"""Explained videos (issue 18) on real data (../shared/data): what an analyst gets from one command.

* `deepfake-explain-explain --video` and `deepfake-explain-predict` (console scripts, subprocesses) on a shared FF++ fake
  (FaceSwap 634_660, official test split) at the same settings give the same scores, bit for bit; the explained outputs
  (annotated MP4, timeline PNG, self-contained HTML page with the annotated frames, index.html) are written, every image of the page and of
  the index loads in headless Chromium (skipped without it), and the detector's provenance and warning (a checkpoint
  saved here with the `provenance` key set by hand: generated demo data) are on every verdict.
* The main face: a video composed here of a real face (frames of the real FF++ original 004) with a smaller static face
  photo pasted in a corner: the photo's track is reported as background and does not decide the verdict; which track
  decided is in the JSON, the CSV and the page. (`real_face_video.mp4` is a street crowd with no persistent face, so the
  single-subject FF++ original is the real face here.)

The detector is a small random-init model: these tests check the plumbing, not the detector. 4 frames per video."""
from __future__ import annotations
import json, os, re, shutil, subprocess, sys
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_explain import evaluate as ev
from deepfake_explain.checkpoint import DEMO_DATA_WARNING
from deepfake_explain.core import Runtime
from deepfake_explain.videos import VideoExplainer
from conftest import TINY  # the small detector shared by the tests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FAKE = "ffpp/manipulated_sequences/FaceSwap/c23/videos/634_660.mp4"
PROVENANCE = dict(datasets=["mini"], methods=["Deepfakes", "Face2Face"], n_train_videos=36, n_val_videos=9, backbone_init="imagenet",
                  image_size=64, layout="spatial", epochs=2, git_commit=None, generated_data=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, save_tiny_checkpoint) -> Path:
    "A training-style checkpoint of a small random-init model (distinct scores), provenance by hand."
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "demo.pt", TINY, provenance=PROVENANCE)


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


def run(script: str, *args) -> subprocess.CompletedProcess:
    exe = BIN / script
    if not exe.exists(): pytest.skip(f"{exe} not installed (make install)")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600, cwd=ROOT)


def browser_images(html: Path, screenshot: Path | None = None, attrs: dict | None = None) -> tuple[int, int]:
    """(images loaded, images) of a page opened in headless Chromium (each page sets `data-images` on load);
    a screenshot of it too when asked; `attrs` receives every `data-*` attribute of the rendered body."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None: pytest.skip("headless Chromium not installed (apt-get install chromium)")
    base = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--virtual-time-budget=10000"]
    r = subprocess.run(base + ["--dump-dom", html.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    m = re.search(r'data-images="(\d+)/(\d+)"', r.stdout)
    assert m, f"{html}: no image count in the DOM Chromium dumped ({r.stderr[-1000:]})"
    body = re.search(r"<body[^>]*>", r.stdout)[0]
    if attrs is not None: attrs.update(re.findall(r'(data-[\w-]+)="([^"]*)"', body))
    if screenshot is not None:
        subprocess.run(base + [f"--screenshot={screenshot}", "--window-size=1200,3000", html.resolve().as_uri()],
                       capture_output=True, timeout=180)
    return int(m[1]), int(m[2])


def test_explain_and_predict_one_fake(shared_data, checkpoint, tmp_path):
    video = shared_data / FAKE
    ex, pr = tmp_path / "explain", tmp_path / "predict"
    r = run("deepfake-explain-explain", "--video", video, "--model_path", checkpoint, "--output", ex, "--frames_per_video", 4,
            "--device", "cpu", "--evidence", 3)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert out[0].startswith("detector provenance: trained on mini") and out[1] == f"WARNING: {DEMO_DATA_WARNING}"
    assert f"[WARNING: {DEMO_DATA_WARNING}]" in out[2] and "decided by track" in out[2]  # on the verdict itself
    r2 = run("deepfake-explain-predict", video, "--model_path", checkpoint, "--output", pr, "--frames_per_video", 4, "--device", "cpu")
    assert r2.returncode == 0, r2.stderr[-3000:]
    # one frame budget, one scorer: the same scores from predict and explain at the same settings
    name = "634_660"
    je, jp = (json.loads((d / "videos" / f"{name}.json").read_text()) for d in (ex, pr))
    assert [(f["frame"], f["face"], f["score"]) for f in je["frames"]] == [(f["frame"], f["face"], f["score"]) for f in jp["frames"]]
    assert (je["video_score"], je["verdict"], je["decided_by"]) == (jp["video_score"], jp["verdict"], jp["decided_by"])
    assert je["frames_per_video"] == 4 and je["n_frames"] == 4
    # provenance and warning in the JSON and the CSV summary
    assert je["provenance"] == dict(PROVENANCE, known=True) and je["warning"] == DEMO_DATA_WARNING
    summary = pd.read_csv(ex / "predictions.csv")
    assert summary["warning"].tolist() == [DEMO_DATA_WARNING] and json.loads(summary["decided_by"][0]) == je["decided_by"]
    # the explained outputs
    assets = ex / "explained" / name
    assert {p.name for p in assets.iterdir()} >= {"annotated.mp4", "timeline.png", "evidence_1.png"}
    with av.open(str(assets / "annotated.mp4")) as c:  # H.264 (browsers play it), one annotated frame per sampled frame
        assert c.streams.video[0].codec_context.name == "h264" and len(list(c.decode(video=0))) == 4
    page = (ex / "explained" / f"{name}.html").read_text()
    assert f"WARNING: {DEMO_DATA_WARNING}" in page and "detector provenance: trained on mini" in page
    assert "decided the verdict" in page and "Strongest evidence" in page and "Skipped frames" in page
    assert f"{name}, frame" in page  # evidence captions name the video and the frame
    assert not re.findall(r"(?:src|href)='(?:https?:)?//", page), "no external asset"
    for src in re.findall(r"<img[^>]*src='([^']+)'", page): assert src.startswith("data:image/png;base64,")
    assert f"<video id=annotated controls preload=metadata" in page and f"src='{name}/annotated.mp4'" in page  # plays inline
    for href in re.findall(r"<a href='([^']+)'", page): assert (ex / "explained" / href).is_file(), href  # the MP4, the index
    index = (ex / "index.html").read_text()
    assert f"href='explained/{name}.html'" in index
    # in a real browser: every image loads (timeline + evidence figures)
    body = {}
    loaded, total = browser_images(ex / "explained" / f"{name}.html", attrs=body)
    assert loaded == total == 1 + len(list(assets.glob("evidence_*.png")))  # the timeline and the evidence figures
    assert float(body["data-video-duration"]) == pytest.approx(2.0, abs=0.05)  # the video plays in the page: 4 frames at 2 fps
    loaded, total = browser_images(ex / "index.html")
    assert loaded == total


def compose_video(shared_data: Path, path: Path, n: int = 24) -> tuple[int, int, int, int]:
    "A real face (frames of the FF++ original 004, 1280x720) with a face photo pasted small in the top-right corner; returns its box."
    photo = cv2.imread(str(shared_data / "faces" / "test_images" / "angelina_jolie" / "1.jpg"))
    h = 150
    photo = cv2.resize(photo, (round(photo.shape[1] * h / photo.shape[0]), h), interpolation=cv2.INTER_AREA)
    cap = cv2.VideoCapture(str(shared_data / "ffpp" / "original_sequences" / "youtube" / "c23" / "videos" / "004.mp4"))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (1280, 720))
    x0, y0 = 1280 - 20 - photo.shape[1], 20
    for _ in range(n):
        ok, frame = cap.read()
        assert ok and frame.shape == (720, 1280, 3)
        frame[y0:y0 + h, x0:x0 + photo.shape[1]] = photo  # a static photo on the wall
        w.write(frame)
    w.release(); cap.release()
    return x0, y0, x0 + photo.shape[1], y0 + h


def test_main_face_decides_not_the_photo(shared_data, checkpoint, tmp_path):
    video = tmp_path / "in" / "subject_and_photo.mp4"
    video.parent.mkdir()
    px0, py0, px1, py1 = compose_video(shared_data, video)
    out = tmp_path / "out"
    df = ev.predict_videos(video, checkpoint, output=out, options=ev.PredictOptions(frames_per_video=4, batch_size=8, progress=False),
                           runtime=Runtime("cpu"), explainer=VideoExplainer(k=2))
    row = df.iloc[0]
    js = json.loads(Path(row.json).read_text())
    assert js["status"] == "ok" and js["n_tracks"] >= 2, js["tracks"]
    fr = pd.DataFrame(js["frames"])
    in_photo = (fr["x0"] >= px0 - 10) & (fr["x1"] <= px1 + 10) & (fr["y0"] >= py0 - 10) & (fr["y1"] <= py1 + 10)
    photo_faces = set(fr.loc[in_photo, "face"])
    assert len(photo_faces) == 1, fr  # the photo is found, as one track
    photo = photo_faces.pop()
    tracks = {t["face"]: t for t in js["tracks"]}
    assert tracks[photo]["persistence"] == 1.0 and not tracks[photo]["main"], tracks  # reported, in every frame, but background
    main = [f for f, t in tracks.items() if t["main"]]
    assert main == [js["main_face"]] and photo not in js["decided_by"] and js["decided_by"] == main
    assert js["video_score"] == pytest.approx(tracks[js["main_face"]]["score"], abs=1e-12)  # the subject's score alone
    assert row.decided_by == main and row.n_background == len(tracks) - 1  # the CSV summary says so too
    assert json.loads(pd.read_csv(out / "predictions.csv")["decided_by"][0]) == main
    page = Path(row.html).read_text()
    assert page.count("decided the verdict") == 1 and "background" in page
    # the reference's behaviour (every track votes) on the same scores: with a threshold between the two, the higher decides
    s_main, s_photo = tracks[main[0]]["score"], tracks[photo]["score"]
    thr = (s_main + s_photo) / 2
    ref = ev.verdict_from_frames(fr, "max", thr, js["n_frames"], voting="all")
    assert ref["decided_by"] == [photo if s_photo > s_main else main[0]]
    assert ev.verdict_from_frames(fr, "max", thr, js["n_frames"])["decided_by"] == main
