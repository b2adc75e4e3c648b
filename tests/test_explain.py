"Integration tests of deepfake_explain.explain and .videos on real data (../shared/data): a real face video, real face photos."
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deepfake_explain.data import read_image_rgb
from deepfake_explain.evaluate import PredictOptions, predict_video
from deepfake_explain.explain import ExplainOptions, explain_folder, relevancy
from deepfake_explain.videos import VideoExplainer
from deepfake_explain.model import build_model

SMALL = {"model": {"image-size": 64}, "spatial": {"depth": 2, "emb-dim": 32, "heads": 2, "dim-head": 16, "mlp-dim": 64}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SMALL).eval()


def test_explain_real_face_photos(shared_data, model, tmp_path):
    folder = shared_data / "faces" / "test_images_aligned"
    table = explain_folder(folder, model, tmp_path, ExplainOptions(("relevancy", "gradcam"), batch_size=4))
    n = len([p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg")])
    assert table["name"].nunique() == n and len(table) == 2 * n
    for r in table.itertuples():
        m = np.load(r.map)
        assert m.shape == (64, 64) and np.isfinite(m).all() and 0 <= m.min() and m.max() <= 1
        assert read_image_rgb(r.figure).ndim == 3
    assert (tmp_path / "explanation" / "gallery_relevancy.png").stat().st_size > 5000


def test_explain_real_video(shared_data, model, tmp_path):
    video = shared_data / "faces" / "real_face_video.mp4"
    ex = VideoExplainer()  # predict's pass with the explainer as its scorer, then the explained outputs
    rec = predict_video(video, model, None, PredictOptions(frames_per_video=2, batch_size=4), scorer=ex.score, keep_images=True)
    rec.update(name=video.stem, provenance={"known": False}, warning=None)
    rec.update(ex.write(rec, tmp_path))
    assert rec["status"] == "ok" and rec["n_crops"] >= 2 and rec["verdict"] in ("fake", "real") and rec["decided_by"]
    assert all(Path(rec[k]).exists() for k in ("html", "mp4", "timeline"))
    assert sorted(p.name for p in (tmp_path / "explained").iterdir()) == ["real_face_video", "real_face_video.html"]


def test_batched_equals_single_on_real_faces(shared_data, model):
    from deepfake_explain.data import ValTransform
    tf = ValTransform(64)
    faces = [tf(read_image_rgb(p)) for p in sorted((shared_data / "faces" / "test_images_aligned").rglob("*.png"))][:3]
    x = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float()
    batched, _ = relevancy(model, x, "predicted")
    single = torch.cat([relevancy(model, x[i:i + 1], "predicted")[0] for i in range(len(x))])
    assert torch.allclose(batched, single, atol=1e-5)
