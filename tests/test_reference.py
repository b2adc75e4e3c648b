"""Use a trained detector: configs/reference.yaml loads the reference's released checkpoints (plain state dicts of the
seed layout) in predict, test and explain, with no network and an empty weights cache (deliverable 6 of issue 16)."""
from __future__ import annotations
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest
import torch

from fixtures_crops import synthetic_crops
from deepfake_explain.model import build_model
from deepfake_explain.checkpoint import load_train_config, model_config

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "configs" / "reference.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def reference_sd(tmp_path_factory) -> Path:
    "A plain state dict of the seed layout, saved as the reference saved its checkpoints (`torch.save(model.state_dict())`)."
    cfg = load_train_config(REFERENCE)
    assert cfg["model"]["layout"] == "seed" and cfg["model"]["image-size"] == 224
    torch.manual_seed(0)
    model = build_model(model_config(cfg))  # the checkpoint's weights replace the backbone's: no ImageNet file needed
    assert sum(p.numel() for p in model.parameters()) == 8_575_403  # the reference's EfficientViT
    path = tmp_path_factory.mktemp("reference") / "efficientnetB0_checkpoint72_All"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def offline_env(tmp_path) -> dict:
    "An empty TORCH_HOME with downloads off: any attempt to fetch ImageNet weights would fail."
    (tmp_path / "torch_home").mkdir()
    return {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "DEEPFAKE_EXPLAIN_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(cmd, env) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"{cmd[0]} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_reference_checkpoint_in_test_and_explain(reference_sd, offline_env, tmp_path):
    crops = synthetic_crops(tmp_path / "crops", n_videos=2, n_frames=2, size=64, splits=("test",))
    r = _run([BIN / "deepfake-explain-test", "--config", REFERENCE, "--model_path", reference_sd, "--data_root", crops,
              "--output", tmp_path / "results", "--device", "cpu", "--workers", 0, "--frames_per_video", 2, "--n_boot", 20],
             offline_env)
    m = json.loads((tmp_path / "results" / "test" / "metrics.json").read_text())
    assert m["n_videos"] == 2 and m["n_frames"] == 4 and "AUC" in r.stdout
    faces = tmp_path / "faces"; faces.mkdir()
    shutil.copy(next((crops / "test_set" / "Original").rglob("*.png")), faces / "face.png")
    # (the deepfake-explain-explain console script exits 1 after a successful run: explain_cli returns its table, which
    # the entry point passes to sys.exit; 05_explain's owner is told. The same function, as a script, without that.)
    (tmp_path / "explain_cli.py").write_text("from deepfake_explain.cli import explain_cli\nexplain_cli()\n")
    r = _run([sys.executable, tmp_path / "explain_cli.py", "--images", faces, "--config", REFERENCE, "--model_path", reference_sd,
              "--output", tmp_path / "explain", "--device", "cpu", "--methods", "relevancy"], offline_env)
    assert "explained 1 images" in r.stdout and (tmp_path / "explain" / "explanation" / "explanations.csv").is_file()
    assert not any((tmp_path / "torch_home").rglob("*")), "something was put in the weights cache"


def test_reference_checkpoint_in_predict(reference_sd, offline_env, tmp_path, shared_data):
    video = shared_data / "faces" / "real_face_video.mp4"
    _run([BIN / "deepfake-explain-predict", video, "--config", REFERENCE, "--model_path", reference_sd,
          "--output", tmp_path / "pred", "--device", "cpu", "--frames_per_video", 2], offline_env)
    verdict = json.loads((tmp_path / "pred" / "videos" / "real_face_video.json").read_text())
    assert verdict["status"] == "ok" and 0 <= verdict["video_score"] <= 1, verdict
    assert not any((tmp_path / "torch_home").rglob("*"))
