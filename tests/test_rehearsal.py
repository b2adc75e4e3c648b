"""The GPU recipe rehearsed on real videos (issue 16): configs/study_rehearsal.yaml runs the full run's values unchanged
(configs/explained_architecture.yaml: 224 px, SGD + StepLR, the reference's augmentations, 3 trainable blocks on ImageNet
weights; 20 frames per video; the reference video rule) on the real FF++ c23 samples (official splits), then tests
cross-dataset on the DFDC samples, through every stage, on CPU for 2 epochs; the seed layout
(configs/study_rehearsal_seed.yaml: configs/reference.yaml) trains, evaluates, explains (figures and quality table) and tests
cross-dataset on the
same data stages, 3 of the 20 crops per video (its 1025 tokens are ~10x dearer on CPU). The ImageNet file is a stand-in
in a temporary TORCH_HOME (inherited by papermill's kernels). Asserts every stage's artefacts and their consistency,
not accuracy. Stage timings go to outputs/rehearsal-<layout>/timings.csv and the test's output."""
from __future__ import annotations
import json, shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from deepfake_explain.data import ORIGINAL, crop_path, equidistant, index_crops
from deepfake_explain.model import imagenet_weights
from deepfake_explain.study import STAGES, run_study
from deepfake_explain.checkpoint import load_train_config, read_checkpoint
from deepfake_explain.train import PROVENANCE_KEYS, read_metrics
from imagenet_standin import write_standin

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("data", "preprocess")      # layout-independent: run once, by the spatial rehearsal
LAYOUT_STAGES = ("train", "evaluate", "explain", "quality", "cross")  # (validity: the spatial rehearsal runs its code path at 224 px;
# in the seed layout it took 185 s on one crop, the suite's budget is 25 minutes)
SEED_FRAMES = 2   # the seed layout's 1025 tokens: 2 of the 20 crops per video (configs/study_rehearsal_seed.yaml)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory, shared_data):
    "A temporary torch hub cache holding the stand-in ImageNet file; downloads off (nothing may be fetched)."
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("torch_home")
    mp.setenv("TORCH_HOME", str(home)); mp.setenv("DEEPFAKE_EXPLAIN_OFFLINE", "1")
    path = write_standin(home)
    assert imagenet_weights("efficientnet-b0")["path"] == path
    yield path
    mp.undo()


def _timings(run: Path, names) -> dict:
    t = {n: json.loads((run / "stages" / f"{n}.json").read_text())["seconds"] for n in names}
    pd.DataFrame({"stage": list(t), "seconds": list(t.values())}).to_csv(run / "timings.csv", index=False)
    print(f"\n{run.name} stage seconds: {t} (total {sum(t.values()):.0f} s)")
    return t


@pytest.fixture(scope="module")
def spatial_run(torch_home) -> Path:
    run = ROOT / "outputs" / "rehearsal-spatial"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run: training would otherwise resume the finished one
    run_study(ROOT / "configs" / "study_rehearsal.yaml", output=run)
    _timings(run, [s for s in STAGES if s != "generate"] + ["cross"])
    return run


def _copy_data_stages(src: Path, dst: Path, frames: int):
    "The spatial run's index, boxes and `frames` equidistant crops per video (training set and test sets) into `dst`."
    shutil.rmtree(dst, ignore_errors=True)
    for crops_root in [src / "crops", *sorted((src / "cross").glob("*/crops"))]:
        rel = crops_root.relative_to(src)
        for (split, method, video), df in index_crops(crops_root).groupby(["split", "method", "video"]):
            keep = sorted(df["frame"].unique())
            keep = {keep[i] for i in equidistant(len(keep), frames)}
            for r in df[df["frame"].isin(keep)].itertuples():
                out = crop_path(dst / rel, split, method, video, r.frame, r.face)
                out.parent.mkdir(parents=True, exist_ok=True); shutil.copy(r.path, out)
            done = crop_path(crops_root, split, method, video, 0, 0).parent / ".done.json"
            shutil.copy(done, crop_path(dst / rel, split, method, video, 0, 0).parent / ".done.json")
        boxes = crops_root.parent / "boxes"
        shutil.copytree(boxes, dst / rel.parent / "boxes")
    shutil.copytree(src / "index", dst / "index")


@pytest.fixture(scope="module")
def seed_run(spatial_run, torch_home) -> Path:
    run = ROOT / "outputs" / "rehearsal-seed"
    _copy_data_stages(spatial_run, run, SEED_FRAMES)
    run_study(ROOT / "configs" / "study_rehearsal_seed.yaml", output=run, stages=",".join(LAYOUT_STAGES))
    _timings(run, LAYOUT_STAGES)
    return run


def _check_run(run: Path, layout: str, frames: int, torch_home: Path):
    p = yaml.safe_load((run / "params.yaml").read_text())
    # training: the full run's config, unchanged; 2 epochs; provenance
    ref = load_train_config(ROOT / "configs" / "explained_architecture.yaml")
    last, best = read_checkpoint(run / "train" / "last.pt"), read_checkpoint(run / "train" / "best.pt")
    cfg = last["config"]
    assert cfg["training"] == ref["training"]
    assert cfg["model"] == {**ref["model"], "layout": layout} and cfg["spatial"] == ref["spatial"]
    assert last["epoch"] == 2 and [r["epoch"] for r in read_metrics(run / "train" / "metrics.csv")] == [1, 2]
    assert last["meta"]["layout"] == layout and last["meta"]["image_size"] == 224 and last["meta"]["trainable_blocks"] == 3
    assert last["meta"]["backbone_weights"] == f"imagenet ({torch_home})"
    crops = index_crops(run / "crops")
    videos = crops.groupby("split")["video"].nunique().to_dict()
    assert videos == {"train": 3, "val": 2, "test": 2}, videos
    assert crops.groupby(["method", "video", "face"]).size().max() <= frames
    prov = last["provenance"]
    assert tuple(prov) == PROVENANCE_KEYS
    assert {k: v for k, v in prov.items() if k != "git_commit"} == {
        "datasets": ["FaceForensics++"], "methods": ["Deepfakes", "Face2Face", "NeuralTextures"], "fakes": "dataset", "n_train_videos": 3,
        "n_val_videos": 2, "backbone_init": "imagenet", "image_size": 224, "layout": layout, "epochs": 2, "generated_data": False, "labels": "true"}
    assert best["provenance"]["epochs"] == best["epoch"]
    # evaluate: the official test split (634 real, 634_660 FaceSwap), reference rule, at most `frames` frames per track
    m = json.loads((run / "test" / "metrics.json").read_text())
    assert (m["n_videos"], m["n_fake"], m["n_real"], m["rule"]) == (2, 1, 1, "reference")
    vids = pd.read_csv(run / "test" / "videos.csv", dtype={"video": str})
    assert sorted(vids["video"]) == ["634", "634_660"] and (vids["n_frames"] <= frames * vids["n_tracks"]).all()
    assert m["info"]["model_sha256"] and m["info"]["frames_per_video"] == p["frames_per_video"]
    # explain: every sample explained by every method, quality table on the test fakes
    ex = pd.read_csv(run / "explanation" / "explanations.csv")
    methods = p.get("explain_methods", "relevancy,fused,attention,rollout,gradcam,random").split(",")  # 05's default
    assert set(ex["method"]) == set(methods) and ex["name"].nunique() >= 1
    if layout == "spatial":  # the validity tests ran on the real fake (the seed run leaves them to the spatial one)
        v = json.loads((run / "explanation" / "validity.json").read_text())
        assert v["n_images"] >= 1 and v["n_sanity"] == p["sanity_images"] and (run / "explanation" / "sanity_summary.csv").exists()
    assert all(Path(f).is_file() for f in ex["figure"])
    q = pd.read_csv(run / "explanation" / "quality.csv")
    assert set(q["method"]) == set(ex["method"])
    # localisation on the real test fake: the samples ship no mask videos, but 634_660's original 634 is present, so its
    # crops get difference masks (|fake - original| inside the face box), labelled so
    assert (q["mask_source"] == "difference mask").all() and (q["n_masks"] >= 1).all(), q[["method", "n_masks", "mask_source"]]
    # cross-dataset: the training set's test split and DFDC at one threshold, chosen on the validation split
    cross = pd.read_csv(run / "cross_dataset.csv")
    sets = ["dfdc", "ffpp-c40"] if layout == "spatial" else ["dfdc"]   # the spatial run adds the c40 samples (cross-compression)
    assert cross["test_set"].tolist() == ["FACEFORENSICS (training set's test split)", *sets]
    assert cross["threshold"].nunique() == 1 and set(cross["threshold_source"]) == {"training set's validation split"}
    own, dfdc = cross.iloc[0], cross.iloc[1]
    assert (own["n_videos"], own["n_fake"], own["n_real"]) == (m["n_videos"], m["n_fake"], m["n_real"])
    assert own["video_auc"] == pytest.approx(m["auc"]) and own["frame_auc"] == pytest.approx(m["frame_auc"])  # threshold-free
    assert (dfdc["dataset"], dfdc["split"], dfdc["n_videos"], dfdc["n_fake"], dfdc["n_real"]) == ("DFDC", "all", 4, 3, 1)
    for col in ("video_auc", "frame_auc", "eer", "ap", "accuracy"): assert cross[col].between(0, 1).all(), col
    if layout == "spatial":  # c23 -> c40: the same dataset at the other compression, its reals and Deepfakes
        c40 = cross.iloc[2]
        assert (c40["dataset"], c40["compression"], c40["n_fake"], c40["n_real"]) == ("FACEFORENSICS", "c40", 6, 6)
        assert (own["compression"], dfdc["compression"]) == ("c23", "c23")
    # the Generalisation table: FF++'s test people are new; its test method (FaceSwap) was not trained on; c40; DFDC
    g = pd.read_csv(run / "generalisation.csv").set_index("setting")
    assert g.loc["in-distribution", "note"].startswith("not measured") and "FaceSwap" in g.loc["unseen method", "test_data"]
    assert g.loc["unseen method", "video_auc"] == pytest.approx(m["auc"])
    assert g.loc["other dataset", "video_auc"] == pytest.approx(dfdc["video_auc"])
    if layout == "spatial":  # and the maps on the c40 fakes, against their difference masks (cross_localisation)
        assert g.loc["other compression", "video_auc"] == pytest.approx(cross.iloc[2]["video_auc"])
        cq = pd.read_csv(run / "cross" / "ffpp-c40" / "explanation" / "quality.csv")
        assert (cq["n_masks"] >= 1).all() and set(cq["mask_source"]) == {"difference mask"}, cq
        assert g.loc["other compression", "note"] == "maps against difference mask" and 0 <= g.loc["other compression", "ours_pointing_game"] <= 1
    print(f"\n{run.name} generalisation table:\n{g.drop(columns='test_data').round(3).to_string()}")
    dm = json.loads((run / "cross" / "dfdc" / "test" / "metrics.json").read_text())
    assert dm["threshold"]["value"] == pytest.approx(own["threshold"]) and dm["info"]["model_sha256"] == m["info"]["model_sha256"]
    # the report has every section, the cross-dataset table included
    report = (run / "report.md").read_text()
    assert "## Cross-dataset test" in report and "dfdc" in report
    if layout == "spatial": assert "not produced" not in report
    print(f"\n{run.name} cross-dataset table:\n{cross.round(3).to_string(index=False)}")


def test_rehearsal_spatial(spatial_run, torch_home):
    for stage in [s for s in STAGES if s != "generate"] + ["cross"]:
        assert (spatial_run / "stages" / f"{stage}.json").exists(), f"stage {stage} did not complete"
    index = pd.read_csv(spatial_run / "index" / "videos.csv", dtype=str)
    assert len(index) == 7 and set(index["compression"]) == {"c23"}
    # nproc: 2 -> the heavy parts ran under torchrun before their notebooks, whose stages then found the work done:
    # every video detected and cropped, the test scores saved, the quality table saved (same key)
    assert (spatial_run / "logs" / "preprocess-torchrun.log").exists()
    assert "'done'" not in (spatial_run / "notebooks" / STAGES["preprocess"]).read_text().split("detect:")[-1][:200]
    assert (spatial_run / "logs" / "evaluate-torchrun.log").exists()
    m = json.loads((spatial_run / "test" / "metrics.json").read_text())
    assert m["info"]["frame_scores"].startswith("reused"), m["info"]["frame_scores"]
    assert "2 process(es)" in (spatial_run / "logs" / "quality-torchrun.log").read_text()
    assert "quality table: reused" in (spatial_run / "notebooks" / STAGES["quality"]).read_text()
    _check_run(spatial_run, "spatial", 20, torch_home)


def test_rehearsal_seed(seed_run, torch_home):
    for stage in LAYOUT_STAGES: assert (seed_run / "stages" / f"{stage}.json").exists(), f"stage {stage} did not complete"
    _check_run(seed_run, "seed", SEED_FRAMES, torch_home)
    assert ORIGINAL in set(index_crops(seed_run / "cross" / "dfdc" / "crops")["method"])


SBI_FRAMES = 4   # crops per video copied from the spatial rehearsal (of its 20): suite time


@pytest.fixture(scope="module")
def sbi_rehearsal_run(spatial_run, torch_home) -> Path:
    """Self-blended training rehearsed on the real videos (issue 28): the spatial rehearsal's data stages (its index, boxes
    and 4 of the 20 crops per video, those of the DFDC and c40 test sets too: no data stage reruns), the full run's config,
    2 epochs on CPU, `fakes: self-blended`: trained on the real faces of the official train split only (their fakes made
    on the fly), validated on self-blended fakes of the validation split's real faces, tested on every shared fake the
    rehearsal tests (c23 FaceSwap, the DFDC fakes, the c40 Deepfakes), none seen. The training reals are the official
    split's (one video, 519, at 4 frames: 4 real faces and their fakes an epoch): the other shared reals are the test
    sets' reals, and training on them would leak into those AUCs. A code-path rehearsal at 224 px, not a figure."""
    run = ROOT / "outputs" / "rehearsal-sbi"
    _copy_data_stages(spatial_run, run, SBI_FRAMES)
    params = {**yaml.safe_load((ROOT / "configs" / "study_rehearsal.yaml").read_text()), "fakes": "self-blended",
              "frames_per_video": SBI_FRAMES, "nproc": 1}   # one process: torchrun's two would cost more than they save here
    run_study(params, output=run, stages="train,evaluate,quality,cross")
    _timings(run, ["train", "evaluate", "quality", "cross"])
    return run


def test_rehearsal_self_blended(sbi_rehearsal_run, spatial_run):
    """The self-blended detector at 224 px on real crops: trained on real faces only (provenance `fakes: self-blended`),
    every test method unseen; the supervised-vs-self-blended table (video AUC per method and test set, our map's pointing
    game and mass in mask) is written and printed. Code path and artefacts asserted, not accuracy (2 epochs on CPU)."""
    from deepfake_explain.self_blended import sbi_comparison
    run = sbi_rehearsal_run
    last = read_checkpoint(run / "train" / "last.pt")
    assert last["epoch"] == 2 and last["provenance"]["fakes"] == "self-blended" and last["provenance"]["methods"] == ["self-blended"]
    assert last["provenance"]["datasets"] == ["FaceForensics++"] and last["meta"]["image_size"] == 224
    split = last["meta"]["dataset"]["train"]
    assert split["fake_frames"] == split["real_frames"] == split["frames"] // 2 > 0
    pm = pd.read_csv(run / "test" / "per_method.csv", keep_default_na=False).set_index("method")
    assert set(pm.loc[[m for m in pm.index if m != "All"], "in_training"]) == {"no"}
    table = sbi_comparison({"supervised": spatial_run, "self-blended": run}, run)
    assert {"main", "dfdc", "ffpp-c40"} <= set(table.test_set) and table.video_auc.dropna().between(0, 1).all()
    assert set(table[table.detector == "self-blended"].test_set) == set(table[table.detector == "supervised"].test_set)
    print(table.round(3).to_string())
