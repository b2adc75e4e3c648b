"""Every installed console script (settings.ini `console_scripts`) exits 0 on success, 1 on a failure, 2 on a bad command line.

Each script runs as a subprocess, the way a shell script calls it: `--help` (0), an unknown flag (2, argparse), a missing
required flag (2) where it has one, an input that does not exist (1), and a cheap success (`deepfake-explain-explain
--images` on two real face photos with a tiny checkpoint: 0, which it did not give before issue 18: it returned its
table to `sys.exit`). The installed scripts run this worktree's code (PYTHONPATH)."""
from __future__ import annotations
import configparser, os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    return dict(s.split("=", 1) for s in cfg["DEFAULT"]["console_scripts"].split())


SCRIPTS = sorted(console_scripts())


def run(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = BIN / script
    if not exe.exists(): pytest.skip(f"{exe} not installed (make install)")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def cheap_runs(tmp_path_factory) -> dict:
    "The cheap cases (help, unknown flag, missing input) of every script, run 3 at a time: each one is mostly Python start-up."
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "a_file").write_text("not a folder")
    cases = {(s, "help"): ["--help"] for s in SCRIPTS} | {(s, "bogus"): ["--no_such_flag", "1"] for s in SCRIPTS} | \
            {(s, "missing"): [a.format(tmp=tmp) for a in MISSING_INPUT[s]] for s in SCRIPTS}
    with ThreadPoolExecutor(3) as pool:
        futures = {k: pool.submit(run, k[0], *args) for k, args in cases.items()}
        return {k: f.result() for k, f in futures.items()}


def test_every_script_is_covered():
    assert set(SCRIPTS) == set(MISSING_INPUT), "a console script without an exit-status test"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_unknown_flag(script, cheap_runs):
    r = cheap_runs[(script, "help")]
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]
    r = cheap_runs[(script, "bogus")]
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr, (r.returncode, r.stderr[-2000:])


MISSING_INPUT = {  # arguments naming an input that does not exist: a failure, exit 1
    "deepfake-explain-detect": ["--data_path", "/nonexistent/ffpp", "--dataset", "FACEFORENSICS"],
    "deepfake-explain-crops": ["--data_path", "/nonexistent/ffpp", "--output_path", "{tmp}/crops"],
    "deepfake-explain-train": ["--config", "/nonexistent/train.yaml", "--data_root", "/nonexistent/crops", "--output", "{tmp}/train"],
    "deepfake-explain-test": ["--model_path", "/nonexistent/best.pt", "--data_root", "/nonexistent/crops", "--output", "{tmp}/test"],
    "deepfake-explain-predict": ["/nonexistent/video.mp4", "--model_path", "/nonexistent/best.pt", "--output", "{tmp}/pred"],
    "deepfake-explain-explain": ["--video", "/nonexistent/video.mp4", "--model_path", "/nonexistent/best.pt", "--output", "{tmp}/ex"],
    "deepfake-explain-study": ["--params", "/nonexistent/study.yaml", "--output", "{tmp}/study"],
    "deepfake-explain-mini-forensics": ["{tmp}/a_file/set"],  # a folder under a file cannot be made
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_input_exits_1(script, cheap_runs):
    r = cheap_runs[(script, "missing")]
    assert r.returncode == 1, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]  # a message that names the problem, not a stack


@pytest.mark.parametrize("script, args, message", [
    ("deepfake-explain-detect", [], "--data_path is required"),
    ("deepfake-explain-test", ["--data_root", "x"], "--model_path is required"),
    ("deepfake-explain-predict", ["x.mp4"], "--model_path is required"),
    ("deepfake-explain-predict", ["x.mp4", "--model_path", "m.pt", "--rule", "median"], "--rule must be one of"),
    ("deepfake-explain-explain", ["--model_path", "m.pt"], "exactly one of --samples, --images, --video"),
    ("deepfake-explain-mini-forensics", [], "the following arguments are required: root"),
])
def test_bad_command_line_exits_2(script, args, message):
    r = run(script, *args)  # (an argparse error or a UsageError: the message, no traceback)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])


def test_directory_as_checkpoint_is_named_a_directory(tmp_path):
    for script, args in [("deepfake-explain-predict", [tmp_path / "v.mp4"]), ("deepfake-explain-test", ["--data_root", tmp_path]),
                         ("deepfake-explain-explain", ["--images", tmp_path])]:
        (tmp_path / "v.mp4").write_bytes(b"")
        r = run(script, *args, "--model_path", tmp_path, "--output", tmp_path / "out")
        assert r.returncode == 1 and "is a directory, not a checkpoint file" in r.stderr, (script, r.stderr[-2000:])


def test_explain_success_exits_0(shared_data, tmp_path):
    "The bug of issue 18: explain succeeded, then exited 1 with its table on stderr."
    from deepfake_explain.model import build_model, load_config
    from deepfake_explain.checkpoint import CHECKPOINT_FORMAT
    cfg = load_config({"model": {"image-size": 64}, "spatial": {"depth": 1, "emb-dim": 16, "mlp-dim": 16, "heads": 1, "dim-head": 16}})
    torch.manual_seed(0)
    torch.save({"format": CHECKPOINT_FORMAT, "model": build_model(cfg).state_dict(), "config": cfg}, tmp_path / "tiny.pt")
    faces = tmp_path / "faces"
    for p in sorted((shared_data / "faces" / "test_images_aligned").rglob("*.png"))[:2]:
        (faces / p.parent.name).mkdir(parents=True); (faces / p.parent.name / p.name).symlink_to(p)
    args = ["--images", faces, "--model_path", tmp_path / "tiny.pt", "--output", tmp_path / "out", "--device", "cpu"]
    r = run("deepfake-explain-explain", *args)
    assert r.returncode == 0 and r.stderr.count("\n") < 5, (r.returncode, r.stderr[-2000:])
    assert "explained 2 images x 1 method(s)" in r.stdout and "detector provenance: unknown" in r.stdout
    r = run("deepfake-explain-explain", *args[:1], faces / "angelina_jolie", *args[2:])  # into the same output: this run's count
    assert r.returncode == 0 and "explained 1 images x 1 method(s)" in r.stdout, r.stdout
