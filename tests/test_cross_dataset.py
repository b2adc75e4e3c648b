"""Cross-dataset protocol (issue 16): Celeb-DF v2's layout indexed like FF++ and DFDC, test sets preprocessed and tested
at the threshold chosen on the training set's validation split, one table per run (CSV and report)."""
from __future__ import annotations
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from deepfake_explain.data import CELEBDF_METHOD, ORIGINAL, index_videos
from fixtures_crops import synthetic_crops
from deepfake_explain.study import CROSS_COLUMNS, check_test_sets, cross_dataset_test, write_report
from deepfake_explain.train import TrainOptions, train

from conftest import TINY_TRAIN
TINY = {**TINY_TRAIN, "training": {**TINY_TRAIN["training"], "augment": False}}




def celebdf_tree(root: Path, video: Path) -> Path:
    "A Celeb-DF v2 tree whose videos are links to one real face video (labels come from the layout, not the pixels)."
    for rel in ("Celeb-real/id0_0000.mp4", "YouTube-real/00170.mp4", "Celeb-synthesis/id0_id1_0000.mp4",
                "Celeb-synthesis/id1_id0_0002.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(video, root / rel)
    (root / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00170.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n0 Celeb-synthesis/id1_id0_0002.mp4\n")
    return root


def test_cross_dataset_table_on_celebdf_layout(shared_data, tmp_path, one_thread):
    celeb = celebdf_tree(tmp_path / "Celeb-DF-v2", shared_data / "faces" / "real_face_video.mp4")
    videos = index_videos(celeb, "CELEBDF")
    assert sorted(zip(videos["split"], videos["method"], videos["video"])) == [
        ("test", CELEBDF_METHOD, "id0_id1_0000"), ("test", CELEBDF_METHOD, "id1_id0_0002"), ("test", ORIGINAL, "00170"),
        ("train", ORIGINAL, "id0_0000")]
    # a trained run: crops of the three splits, a tiny detector
    run = tmp_path / "run"
    synthetic_crops(run / "crops", n_videos=8, n_frames=4, size=32, splits=("train", "val", "test"))
    train(TINY, run / "crops", run / "train", TrainOptions(num_epochs=1, workers=0, seed=0, progress=False))
    sets = [{"dataset": "CELEBDF", "data_root": str(celeb), "name": "celebdf"}]
    table = cross_dataset_test(run, sets, train_dataset="synthetic", frames_per_video=2, device="cpu", n_boot=20)
    assert list(table.columns) == CROSS_COLUMNS and table["test_set"].tolist() == ["synthetic (training set's test split)", "celebdf"]
    assert table["threshold"].nunique() == 1 and set(table["threshold_source"]) == {"training set's validation split"}
    celeb_row = table.iloc[1]
    assert (celeb_row["dataset"], celeb_row["split"], celeb_row["n_videos"], celeb_row["n_fake"]) == ("CELEBDF", "test", 3, 2)
    for col in ("video_auc", "frame_auc", "eer", "ap", "accuracy"):
        assert table[col].between(0, 1).all(), col
    # only the listed test videos were preprocessed, as one test split
    crops = run / "cross" / "celebdf" / "crops"
    assert sorted(p.name for p in (crops / "test_set").iterdir()) == [CELEBDF_METHOD, ORIGINAL]
    assert not (crops / "train_set").exists() and not list((crops / "test_set").rglob("id0_0000"))
    pd.testing.assert_frame_equal(pd.read_csv(run / "cross_dataset.csv"), table, check_dtype=False)
    write_report(run)
    assert "Cross-dataset test" in (run / "report.md").read_text() and "celebdf" in (run / "report.html").read_text()


def test_bad_test_sets_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_sets\\[0\\]: .*missing: test set folder not found"):
        check_test_sets([{"dataset": "DFDC", "data_root": str(tmp_path / "missing")}])
    with pytest.raises(ValueError, match="dataset 'CelebDF-v3'"):
        check_test_sets([{"dataset": "CelebDF-v3", "data_root": str(tmp_path)}])
