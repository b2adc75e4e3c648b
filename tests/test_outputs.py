"""Outputs a user can trust when runs overlap, repeat or stop (issue 31; the index of issue 30, item 6).

Each numbered case of the issue, as a user meets it: the installed console scripts as subprocesses (exit status, files
written, messages read), a small random-init detector (tests/conftest.py), 2 frames per video, short videos (links to the
shared real face video, and blank videos generated here). The detector is random: these tests check the outputs, not
the verdicts.
"""
from __future__ import annotations
import contextlib, io, json, os, re, shutil, signal, subprocess, sys, time, urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from deepfake_explain.checkpoint import DEMO_DATA_WARNING, RANDOM_BACKBONE_WARNING
from deepfake_explain.videos import _annotated_frames, _fit_lines, annotate_frame
from conftest import TINY, sigint_as_in_a_terminal

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PROVENANCE = dict(datasets=["mini"], methods=["Deepfakes"], n_train_videos=4, n_val_videos=2, backbone_init="random",
                  image_size=64, layout="spatial", epochs=1, git_commit=None, generated_data=True)  # both warnings
FAST = ["--frames_per_video", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, save_tiny_checkpoint) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "demo.pt", TINY, provenance=PROVENANCE)


def exe(script: str) -> str:
    p = BIN / script
    if not p.exists(): pytest.skip(f"{p} not installed (make install)")
    return str(p)


def run(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([exe(script), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


def blank_video(path: Path, n: int = 6, shade: int = 80) -> Path:
    "A short 96x64 video without a face (a `no_face` verdict, quickly)."
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(n): w.write(np.full((64, 96, 3), shade + 5 * i, np.uint8))
    w.release()
    return path


def face_video(shared_data: Path, path: Path) -> Path:
    "A link to the shared real face video (a street: several face tracks)."
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(shared_data / "faces" / "real_face_video.mp4")
    return path


def chromium() -> str:
    c = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if c is None: pytest.skip("headless Chromium not installed (apt-get install chromium)")
    return c


def dump_dom(url: str) -> str:
    r = subprocess.run([chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    return r.stdout


# 1, 2, 5, 6 and issue 30's index: two runs at once into one folder, a file name in both, '#'/'%' in a name, stale pages
def test_concurrent_runs_same_names_links_and_stale_pages(shared_data, checkpoint, tmp_path):
    a = [blank_video(tmp_path / "a" / "clip.mp4"), blank_video(tmp_path / "a" / "take#2 50%.mp4", shade=120),
         face_video(shared_data, tmp_path / "a" / "face.mp4")]
    clip_b = face_video(shared_data, tmp_path / "b" / "clip.mp4")
    out = tmp_path / "out"
    runs = [[str(tmp_path / "a")], [str(clip_b), "--threshold", "1.0"]]  # b: real whatever its score (made fake below)
    procs = [subprocess.Popen([exe("deepfake-explain-predict"), *r, "--model_path", str(checkpoint), "--output", str(out), "--explain", *FAST],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT) for r in runs]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in results]
    # 1. the union of both runs' rows, each video once
    s = pd.read_csv(out / "predictions.csv", dtype={"prediction": str}, keep_default_na=False).set_index("path")
    assert sorted(s.index) == sorted(str(p.absolute()) for p in a + [clip_b])
    index = (out / "index.html").read_text()
    for name in s["name"]: assert f">{name}</a>" in index, name  # every row linked on the index
    # 2. the two clip.mp4 keep their own name, files and page; each row links to its own
    ra, rb = s.loc[str(a[0].absolute())], s.loc[str(clip_b.absolute())]
    assert "clip" in (ra["name"], rb["name"]) and ra["name"] != rb["name"]  # the first to claim it keeps the plain name
    assert all(re.fullmatch(r"clip(-[0-9a-f]{8})?", n) for n in (ra["name"], rb["name"]))
    for row in (ra, rb):
        assert json.loads(Path(row["json"]).read_text())["path"] == row.name
        assert row.name in Path(row["html"]).read_text()  # the page describes its own video
    # 9. prediction stays 0/1 beside videos without a verdict
    assert (rb["status"], rb["verdict"], rb["prediction"]) == ("ok", "real", "0") and ra["prediction"] == ""
    # issue 30, item 6: the provenance and warning once, a thumbnail of the strongest face, 'decided by' in words
    assert index.count(f"WARNING: {DEMO_DATA_WARNING}") == 1 and index.count("detector provenance:") == 1
    assert "track 0 (main face)" in index and "[0]" not in index
    thumb = Path(rb["html"]).with_suffix("") / "thumb.png"
    assert thumb.is_file() and f"src='{urllib.parse.quote(os.path.relpath(thumb, out))}'" in index
    # 6. '#' and '%' in a file name: the href is encoded, resolves onto the page, and Chromium opens that page from the index
    href = re.search(r"<a href='([^']+)'>take#2 50%</a>", index)[1]
    assert "#" not in href and (out / urllib.parse.unquote(href)).is_file()
    dom = dump_dom(urllib.parse.urljoin((out / "index.html").as_uri(), href))
    assert "<h1>take#2 50%</h1>" in dom, dom[-500:]
    # 5. predict without --explain changes b's verdict: its page is kept, not redrawn, and marked stale on the index
    page = Path(rb["html"]).read_bytes()
    from deepfake_explain.cli import predict_cli  # the console script's function, in-process (no second start-up)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        predict_cli.__wrapped__(str(clip_b), model_path=str(checkpoint), output=str(out), threshold=0.0, frames_per_video=2, device="cpu")
    s2 = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("path")
    assert s2.loc[str(clip_b.absolute()), "verdict"] == "fake" and s2.loc[str(clip_b.absolute()), "html"] == rb["html"]
    assert Path(rb["html"]).read_bytes() == page and len(s2) == 4
    index = (out / "index.html").read_text()
    assert index.count("stale page") == 1 and "it shows: real, score" in index
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


# 8. an interrupted predict --explain keeps its finished videos; the rerun does only the others
def test_interrupted_explain_resumes(shared_data, checkpoint, tmp_path):
    vids = [face_video(shared_data, tmp_path / "in" / f"v{i}.mp4") for i in range(3)]
    out = tmp_path / "out"
    args = [exe("deepfake-explain-predict"), str(tmp_path / "in"), "--model_path", str(checkpoint), "--output", str(out), "--explain", *FAST]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                         preexec_fn=sigint_as_in_a_terminal)
    t0 = time.monotonic()
    while not (out / "predictions.csv").exists() and p.poll() is None and time.monotonic() - t0 < 240: time.sleep(0.02)
    p.send_signal(signal.SIGINT)  # Ctrl-C after the first video
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    m = re.search(r"deepfake-explain-predict: interrupted: (\d) of 3 videos done, rerun to resume$", err.strip())
    assert m, err[-1000:]
    done = pd.read_csv(out / "predictions.csv")
    assert len(done) == int(m[1]) and 1 <= len(done) < 3 and all(Path(h).is_file() for h in done["html"])
    r = subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    again = pd.read_csv(out / "predictions.csv").set_index("name")
    assert sorted(again["path"]) == sorted(str(v.absolute()) for v in vids) and set(again.index[again["reused"]]) == set(done["name"])  # only the unfinished ones redone
    assert all(Path(h).is_file() for h in again["html"])


# 7. values outside their range: refused before any work (exit 2), the flag named
def test_values_out_of_range_exit_2(tmp_path):
    r = run("deepfake-explain-predict", "x.mp4", "--model_path", "m.pt", "--threshold", "1.5")  # as a user types it
    assert r.returncode == 2 and "--threshold must be a probability in [0, 1]" in r.stderr and "Traceback" not in r.stderr, r.stderr
    from deepfake_explain.cli import explain_cli, predict_cli, test_cli
    cases = [(predict_cli, dict(path="x.mp4", model_path="m.pt", frames_per_video=100000), "--frames_per_video must be in [1, 300]"),
             (predict_cli, dict(path="x.mp4", model_path="m.pt", threshold=-0.2), "--threshold must be a probability in [0, 1]"),
             (explain_cli, dict(video="x.mp4", model_path="m.pt", threshold=1.5), "--threshold must be a probability in [0, 1]"),
             (test_cli, dict(model_path="m.pt", data_root="c", threshold=-0.2), "--threshold must be a probability in [0, 1]")]
    for f, kw, message in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e: f.__wrapped__(**kw)
        assert e.value.code == 2 and message in err.getvalue(), (kw, err.getvalue())
    assert not list(tmp_path.iterdir())


# 3. --crops without usable masks: a warning, recorded; with --strict, exit 1
def test_crops_without_masks_warn_or_fail(checkpoint, tmp_path):
    from fixtures_crops import synthetic_crops
    crops = synthetic_crops(tmp_path / "crops", n_videos=4, n_frames=1, splits=("test",))
    out = tmp_path / "q"
    common = ["--crops", crops, "--model_path", checkpoint, "--output", out, "--device", "cpu", "--methods", "relevancy", "--costly_images", 1]
    r = run("deepfake-explain-explain", *common, "--data_root", tmp_path / "nowhere")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"WARNING: no masks, the localisation columns of quality.csv are empty: --data_root {tmp_path / 'nowhere'}: no such folder" in r.stderr
    assert "no such folder" in (out / "explanation" / "quality_warning.txt").read_text()
    # --strict: the same run (its table reused, in-process: the console script's function) fails, exit 1
    from deepfake_explain.cli import explain_cli
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as e:
        explain_cli.__wrapped__(crops=str(crops), model_path=str(checkpoint), output=str(out), device="cpu", methods="relevancy",
                                costly_images=1, data_root=str(tmp_path / "nowhere"), strict=True)
    assert e.value.code == 1 and "no such folder (--strict)" in err.getvalue(), err.getvalue()


# 9. the banner: the longest warning at the smallest frame fits (wrapped, nothing drawn past the right edge)
def test_longest_warning_fits_the_smallest_frame():
    warn = "; ".join([DEMO_DATA_WARNING, RANDOM_BACKBONE_WARNING])  # provenance_warning's longest
    rec = dict(warning=warn, frames=[], tracks=[], voting_faces=[], rule="reference", threshold=0.55, path="/nonexistent.mp4")
    # the smallest frame MTCNN finds a face in (its min_face_size, 20 px): annotated frames are enlarged to MIN_SIDE
    images, _ = _annotated_frames(rec, {0: np.full((20, 20, 3), 120, np.uint8)}, [], 960)
    img = images[0]
    lines = _fit_lines(f"WARNING: {warn}", img.shape[1] - 12, 0.45)
    assert " ".join(lines) == f"WARNING: {warn}"  # wrapped, not cut
    assert all(cv2.getTextSize(l, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 3)[0][0] <= img.shape[1] - 12 for l in lines)
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, 0.45, 3)
    band = img[-(len(lines) * (th + base + 2) + 6):]  # the footer band as drawn
    assert (band[:, -4:] == (90, 0, 0)).all()  # the band's right edge: no text pixel there
    assert (band != (90, 0, 0)).any(axis=2).sum() > 500  # and the text is drawn
    # a frame too small for the whole warning (96x64 as drawn): shortened with '...', still inside the frame
    small = annotate_frame(np.full((64, 96, 3), 120, np.uint8), [], "frame 0", f"WARNING: {warn}")
    assert (small[-12:, -3:] == (90, 0, 0)).all()
