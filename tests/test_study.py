"""The study end to end: the quick study on mini-forensics (the README's main job), its report,
the docs site built from its executed notebooks, and the quick study on the real FF++ samples.

The quick run goes to outputs/quick, the folder the notebooks' own defaults use, so after
`nbdev_test` has run them the stages find their work done (every stage is resumable)."""
import contextlib, json, re, shutil, subprocess, sys, time
from pathlib import Path

import pytest

import torch

from deepfake_explain.explain import COSTLY_METHODS, METHODS
from deepfake_explain.headline import BASELINES
from deepfake_explain.explain import OURS, headline_map
from deepfake_explain.study import run_study, STAGES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from quick_variation import figures  # noqa: E402  (one definition of the figures, for this test and the tool)


def library_files() -> dict:
    "Each library file's modification time and bytes (a rewrite with the same content still changes the time)."
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((ROOT / "deepfake_explain").glob("*.py"))}


LIBRARY_BEFORE_STUDY = {}


@pytest.fixture(scope="module")
def quick_run() -> Path:
    LIBRARY_BEFORE_STUDY.update(library_files())
    return run_study(ROOT / "configs" / "study_quick.yaml", output=ROOT / "outputs" / "quick")


# What the quick study's test asserts, and why only that. Its model is trained on the CPU the suite runs on, and
# floating-point results change with the processor and the thread count (issue 15: a fresh machine of the same kind
# gave relevancy vs random on the negative perturbation test a CI of -0.0006..0.0091, here 0.022..0.035). So the quick
# study was rerun for seeds 0, 1, 2 at 1 and 2 torch threads (`tools/quick_variation.py`, on this run's data stages;
# 2026-11-29, 2-core AMD EPYC, AVX2): a figure is asserted only where the margin of its worst run over the bound is
# larger than its spread (max - min) across those six runs. The thread count alone moves a trained model as much as
# the seed does (same seed, 1 vs 2 threads: video AUC up to 0.016 apart, relevancy's pointing game up to 0.060,
# rollout's 0.081), so no comparison within that spread is safe on another processor. Everything else is reported (report.html,
# explanation/quality_vs_baselines.csv), not asserted. The six runs (lower end of relevancy's paired 95% CI against
# each baseline; the AUC target is asserted whatever its margin):
#
# | figure                            |    min |    max |  range | margin | asserted |
# |-----------------------------------|--------|--------|--------|--------|----------|
# | video_auc                         |  0.984 |  1.000 |  0.016 |  0.084 | yes      |
# | vs_attention.pos_auc_prob.ci_low  | -0.003 |  0.156 |  0.159 | -0.003 | no       |
# | vs_attention.neg_auc_prob.ci_low  | -0.005 |  0.045 |  0.050 | -0.005 | no       |
# | vs_attention.pointing_game.ci_low | -0.070 |  0.591 |  0.661 | -0.070 | no       |
# | vs_attention.mass_in_mask.ci_low  |  0.017 |  0.266 |  0.249 |  0.017 | no       |
# | vs_attention.pixel_auroc.ci_low   | -0.025 |  0.533 |  0.558 | -0.025 | no       |
# | vs_rollout.pos_auc_prob.ci_low    |  0.004 |  0.138 |  0.134 |  0.004 | no       |
# | vs_rollout.neg_auc_prob.ci_low    | -0.001 |  0.023 |  0.024 | -0.001 | no       |
# | vs_rollout.pointing_game.ci_low   | -0.044 |  0.039 |  0.083 | -0.044 | no       |
# | vs_rollout.mass_in_mask.ci_low    | -0.004 |  0.082 |  0.087 | -0.004 | no       |
# | vs_rollout.pixel_auroc.ci_low     | -0.035 |  0.036 |  0.071 | -0.035 | no       |
# | vs_gradcam.pos_auc_prob.ci_low    | -0.003 |  0.057 |  0.060 | -0.003 | no       |
# | vs_gradcam.neg_auc_prob.ci_low    | -0.000 |  0.004 |  0.004 | -0.000 | no       |
# | vs_gradcam.pointing_game.ci_low   |  0.062 |  0.344 |  0.281 |  0.062 | no       |
# | vs_gradcam.mass_in_mask.ci_low    |  0.039 |  0.331 |  0.292 |  0.039 | no       |
# | vs_gradcam.pixel_auroc.ci_low     |  0.006 |  0.225 |  0.219 |  0.006 | no       |
# | vs_random.pos_auc_prob.ci_low     |  0.005 |  0.233 |  0.228 |  0.005 | no       |
# | vs_random.neg_auc_prob.ci_low     | -0.005 |  0.045 |  0.050 | -0.005 | no       |
# | vs_random.pointing_game.ci_low    |  0.482 |  0.547 |  0.065 |  0.482 | yes      |
# | vs_random.mass_in_mask.ci_low     |  0.176 |  0.392 |  0.216 |  0.176 | no       |
# | vs_random.pixel_auroc.ci_low      |  0.262 |  0.308 |  0.045 |  0.262 | yes      |
ASSERTED = {  # figure (tools/quick_variation.figures) -> the bound it must exceed
    "video_auc": 0.9,
    "vs_random.pointing_game.ci_low": 0,
    "vs_random.pixel_auroc.ci_low": 0,
}


def test_quick_study_completes_with_report(quick_run):
    assert library_files() == LIBRARY_BEFORE_STUDY, "the study run rewrote the library (deepfake_explain/*.py)"
    logs = {p.stem: p.read_text() for p in (quick_run / "logs").glob("*.log")}
    assert set(logs) == set(STAGES), "every stage keeps its kernel's messages in logs/<stage>.log"
    for stage in STAGES:
        assert (quick_run / "stages" / f"{stage}.json").exists(), f"stage {stage} has no completion record"
        assert (quick_run / "notebooks" / STAGES[stage]).exists()
    metrics = json.loads((quick_run / "test" / "metrics.json").read_text())
    assert metrics["n_videos"] == metrics["n_fake"] + metrics["n_real"] == 32 and metrics["n_real"] == 8
    import pandas as pd
    q = pd.read_csv(quick_run / "explanation" / "quality.csv").set_index("method")
    d = pd.read_csv(quick_run / "explanation" / "quality_vs_baselines.csv")
    # the quick study's maps: fused, relevancy, the attention baselines, Grad-CAM, random and Captum's three (configs/study_quick.yaml),
    # and the headline map the rule chose (05f_headline), which every later stage adds when it is not among them (`stage_methods`)
    chosen = json.loads((quick_run / "explanation" / "headline.json").read_text())["map"]
    assert set(d.baseline) == {"fused", "attention", "rollout", "gradcam", "random", "saliency", "ig", "occlusion"} | ({chosen} - {"relevancy"})
    assert chosen in q.index and (quick_run / "explanation" / f"quality_{chosen}_vs_baselines.csv").exists()   # ours, measured on the test split
    costly = d.baseline.isin(COSTLY_METHODS)  # a stated sample of the crops (costly_quality_images: 64)
    assert (d[~costly].n_images == q.loc["relevancy"].n_masks).all() and (d[costly].n_images == q.loc["ig"].n_masks).all()
    assert q.loc["ig", "n_images"] == q.loc["occlusion", "n_images"] == 64 < q.loc["saliency", "n_images"] == q.loc["relevancy", "n_images"]
    assert set(d.metric) == {"pointing_game", "mass_in_mask", "pixel_auroc", "pos_auc_prob", "neg_auc_prob"}
    got = figures(quick_run)
    # issue 9's target: video AUC >= 0.9 (32 test videos: 8 real, 24 fake); the CI lows must be above 0
    low = {k: got[k] for k, bound in ASSERTED.items() if not (got[k] >= bound if k == "video_auc" else got[k] > bound)}
    assert not low, f"figures below their bound {ASSERTED}: {low}\n{d}"
    rob = pd.read_csv(quick_run / "robustness" / "robustness.csv")  # 3 types x 3 levels + the unperturbed reference, every cheap map
    assert set(zip(rob.perturbation, rob.level)) == {("none", 0)} | {(t, l) for t in ("jpeg", "noise", "blur") for l in (1, 3, 5)}
    assert rob.video_auc.between(0, 1).all() and (quick_run / "robustness" / "robustness.png").stat().st_size > 10_000
    g = pd.read_csv(quick_run / "generalisation.csv").set_index("setting")  # the headline table: every row, filled or saying why not
    assert list(g.index) == ["in-distribution", "unseen method", "unseen people", "other compression", "other dataset",
                             "jpeg (level 3)", "noise (level 3)", "blur (level 3)"]
    assert g.loc[["jpeg (level 3)", "noise (level 3)", "blur (level 3)"], "ours_pointing_game"].between(0, 1).all()
    assert set(g["ours"].dropna()) == {chosen}   # our map in the Generalisation table: the one the headline rule chose
    assert g.loc["in-distribution", "video_auc"] == metrics["auc"] and g.loc[["unseen method", "unseen people"], "note"].str.startswith("not run").all()
    html = (quick_run / "report.html").read_text()
    assert "Generalisation: what holds and what breaks" in html
    assert "not produced" not in html, "an artefact the report expects is missing"
    assert "Explanation quality" in html and "Relevancy against each baseline" in html and html.count("data:image/png;base64,") >= 3
    claim = pd.read_csv(quick_run / "explanation" / "claim_grid.csv")  # the claim grid: 8 test fakes over the 3 methods, every map
    assert claim.face.nunique() == 8 and set(claim.manipulation) == {"FaceSwapBlend", "MouthEyesEdit", "SelfBlended"}
    assert set(claim["map"]) == set(d.baseline) | {"relevancy"} and claim.pointing_game.isin([0, 1]).all() and "The claim in one picture" in html
    env = json.loads((quick_run / "environment.json").read_text())
    assert env["packages"]["torch"] and "commit" in env["git"]
    # issue 29: the headline map is chosen by the coded rule on validation fakes, among every map but the random control
    h = json.loads((quick_run / "explanation" / "headline.json").read_text())
    cands = pd.read_csv(quick_run / "explanation" / "headline_candidates.csv").set_index("method")
    assert set(cands.index) == set(METHODS) - {"random"} and h["split"] == "val" and (cands.n_images == h["n_images"]).all()
    assert h["tests"] == ["model randomisation (every weight re-drawn)", "data randomisation (shuffled labels)"]
    assert cands[["pointing_game", "model_abs_spearman", "data_abs_spearman"]].notna().all().all()
    worst = cands[["model_abs_spearman", "data_abs_spearman"]].max(axis=1)
    assert (cands.passes == (worst <= h["threshold"])).all()        # the rule, applied to every candidate's numbers
    if h["passes"]:  # a map that passes both tests, the best localiser among those that do
        passing = cands[cands.passes]
        assert h["map"] in passing.index and cands.loc[h["map"], "pointing_game"] == passing.pointing_game.max()
    else: assert not cands.passes.any() and h["statement"].startswith("No map passes")   # or the statement that none does
    shuffled = torch.load(quick_run / "train_shuffled" / "last.pt", weights_only=True)   # the recipe, on shuffled labels
    best = torch.load(quick_run / "train" / "best.pt", weights_only=True)
    assert shuffled["provenance"]["labels"] == "shuffled (seed 0)" and shuffled["epoch"] == best["epoch"]
    assert all(shuffled["config"][k] == best["config"][k] for k in ("model", "spatial", "training"))
    lrs = [pd.read_csv(quick_run / r / "metrics.csv")["lr"].tolist() for r in ("train_shuffled", "train")]
    assert lrs[0] == lrs[1][:best["epoch"]], lrs   # the detector's schedule: each epoch at the detector's learning rate
    dr = json.loads((quick_run / "explanation" / "validity.json").read_text())["data_randomisation"]   # every map on the test fakes
    assert isinstance(dr, dict) and set(dr["methods"]) == set(d.baseline) | {"relevancy"} and dr["labels"] == "shuffled (seed 0)"
    assert all(r["mean_abs_spearman_ci_low"] <= r["mean_abs_spearman"] <= r["mean_abs_spearman_ci_high"] for r in dr["methods"].values() if r["n_images"])
    assert dr["methods"]["random"]["mean_spearman"] == pytest.approx(1)   # the control: the same map whatever the model
    assert "Headline map:</b> " + h["map"] in html and "Data randomisation" in html


def page_layout(html: Path, width: int = 1280, height: int = 900) -> dict:
    """The layout of a page as headless Chromium lays it out in a `width` x `height` window, once loaded: the page's
    scroll and client widths, the viewport's height and the summary's top and bottom (from a probe added to a copy)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None: pytest.skip("headless Chromium not installed (apt-get install chromium)")
    probe = ("<script>addEventListener('load', () => { const e = document.documentElement, s = document.getElementById('summary');"
             "document.body.dataset.layout = JSON.stringify({scroll_width: e.scrollWidth, client_width: e.clientWidth, "
             "view_height: innerHeight, summary_top: s ? s.getBoundingClientRect().top : null, "
             "summary_bottom: s ? s.getBoundingClientRect().bottom : null}); });</script></body>")
    copy = html.parent / f".probe-{html.name}"
    copy.write_text(html.read_text().replace("</body>", probe))
    try:
        r = subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--virtual-time-budget=10000",
                            f"--window-size={width},{height}", "--dump-dom", copy.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    finally: copy.unlink()
    m = re.search(r'data-layout="([^"]*)"', r.stdout)
    assert m, f"{html}: no layout in the DOM Chromium dumped ({r.stderr[-1000:]})"
    return json.loads(m[1].replace("&quot;", '"'))


def test_quick_study_report_reads_in_chromium(quick_run, tmp_path):
    """The report as a reader opens it (issue 30): at 1280 px no horizontal page scroll (a wide table scrolls in its own
    box), the summary in the first screen, the sections in order, and no path of the machine that ran it."""
    html = (quick_run / "report.html").read_text()
    assert str(quick_run) not in html and str(ROOT) not in html, "an absolute path of the machine in the report"
    order = [html.index(f'id="{s}"') for s in ("summary", "detection", "explanation", "validity", "generalisation", "appendix", "details", "glossary")]
    assert order == sorted(order), "the report's sections out of order"
    layout = page_layout(quick_run / "report.html")
    print("report layout at 1280x900:", layout)
    assert layout["scroll_width"] <= layout["client_width"], f"the page scrolls sideways at 1280 px: {layout}"
    assert 0 <= layout["summary_top"] and layout["summary_bottom"] <= layout["view_height"], f"the summary is not in the first screen: {layout}"


def _kill_tree(proc: subprocess.Popen) -> int:
    "SIGKILL a process and all its descendants (the study runner and its notebook kernel), as a crash or OOM kill would."
    import psutil
    kids = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    for p in kids:
        with contextlib.suppress(psutil.NoSuchProcess): p.kill()
    psutil.wait_procs(kids, timeout=60)
    return proc.wait()  # (reaped here, not by psutil, so that the signal shows in the return code)


def _metric_rows(path: Path) -> list[list[str]]:
    "train/metrics.csv without its timing columns (the learning itself: losses, accuracies, AUCs)."
    import pandas as pd
    return pd.read_csv(path).drop(columns=["train_seconds", "seconds"]).values.tolist()


LOMO = dict(methods=["FaceSwapBlend", "SelfBlended"], test_methods="All", num_epochs=1,
            explain_methods="fused,relevancy,attention,random", max_quality_images=48)  # the rotation's changes to study_quick


@pytest.fixture(scope="module")
def lomo_run(quick_run, tmp_path_factory) -> Path:
    """One leave-one-method-out rotation on the quick study's data (issue 27): trained on two of mini-forensics' three
    methods (1 epoch: the code path and the tables, not a figure), tested on all three, four maps on 48 test crops. Its parameters are `lomo.yaml` beside it."""
    import yaml
    tmp = tmp_path_factory.mktemp("lomo")
    run = tmp / "lomo"
    for d in ("mini_forensics", "index", "boxes", "crops"): shutil.copytree(quick_run / d, run / d, symlinks=True)
    params = {**yaml.safe_load((ROOT / "configs" / "study_quick.yaml").read_text()), **LOMO}
    (tmp / "lomo.yaml").write_text(yaml.safe_dump(params))
    cmd = [str(Path(sys.executable).parent / "deepfake-explain-study"), "--params", str(tmp / "lomo.yaml"),
           "--output", str(run), "--stages", "train,evaluate,quality"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run


def test_leave_one_method_out_rotation(lomo_run):
    """The per-method table marks the held-out method and pools seen against unseen; the Generalisation table fills its
    in-distribution and unseen-method rows (AUC with CI, our map and the best baseline) and says why the other rows are
    empty. The figures are reported (printed), only their presence and shape are asserted."""
    import pandas as pd
    run = lomo_run
    prov = json.loads((run / "test" / "metrics.json").read_text())["info"]["provenance"]
    assert prov["methods"] == ["FaceSwapBlend", "SelfBlended"]
    pm = pd.read_csv(run / "test" / "per_method.csv", keep_default_na=False).set_index("method")
    assert pm.loc[["FaceSwapBlend", "SelfBlended", "MouthEyesEdit", "seen methods", "unseen methods"], "in_training"].tolist() == \
        ["yes", "yes", "no", "yes", "no"]
    assert pm.loc["unseen methods", "n_fake"] == pm.loc["MouthEyesEdit", "n_fake"] == 8 and pm.loc["seen methods", "n_fake"] == 16
    g = pd.read_csv(run / "generalisation.csv").set_index("setting")
    for row in ("in-distribution", "unseen method"):
        assert 0 <= g.loc[row, "auc_ci_low"] <= g.loc[row, "auc_ci_high"] <= 1 and 0 <= g.loc[row, "video_auc"] <= 1, g.loc[row]
        assert 0 <= g.loc[row, "ours_pointing_game"] <= 1 and g.loc[row, "best_baseline"] in BASELINES, g.loc[row]
        assert g.loc[row, "ours"] == headline_map(run)["map"] == OURS, g.loc[row]   # no headline stage in the rotation: the default map
    assert "MouthEyesEdit" in g.loc["unseen method", "test_data"] and "seen in training" in g.loc["unseen method", "test_data"]
    assert g.loc["unseen people", "note"].startswith("not run: the test split shares identities with training")
    assert g.loc["other dataset", "note"] == "not run: the study has no `test_sets`"
    html = (run / "report.html").read_text()
    assert "Generalisation: what holds and what breaks" in html and "unseen method" in html
    print(g[["video_auc", "auc_ci_low", "auc_ci_high", "ours", "ours_pointing_game", "ours_mass_in_mask", "best_baseline",
             "baseline_pointing_game", "baseline_mass_in_mask"]].round(3).to_string())


def test_killed_study_resumes_to_the_results_of_an_uninterrupted_run(quick_run, sbi_run, tmp_path):
    """SIGKILL the study runner and its kernel in the middle of training, rerun it with --resume: finished work is not
    redone, nothing half-written is left, and every result equals the uninterrupted run's. The uninterrupted run is the
    self-blended demo variant (`sbi_run`: 2 short epochs, so a kill after the first leaves one to resume, and its fakes
    are drawn from (seed, epoch, face), which a resumed epoch must draw again exactly); the data stages' outputs
    (mini-forensics, index, boxes, crops) are the quick study's, linked; training and evaluation run again from scratch
    with the same seed, so this is also the determinism test of the detector (generation and detection are checked for
    determinism in test_mini_forensics, the supervised loader's resume in test_train; the explanation stages, whose
    resumption is their files' atomic writes and keyed parts, are left out to keep the suite under 25 minutes)."""
    run = tmp_path / "killed run é"
    run.mkdir()
    for d in ("mini_forensics", "index", "boxes", "crops"): (run / d).symlink_to(quick_run / d)   # read only here: linked
    cmd = [str(Path(sys.executable).parent / "deepfake-explain-study"), "--params", str(sbi_run.parent / "sbi.yaml"),
           "--output", str(run), "--stages", "train,evaluate"]
    log = tmp_path / "first.log"
    with open(log, "w") as f: proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    metrics, deadline = run / "train" / "metrics.csv", time.time() + 1500
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # header + 1 finished epoch
        assert proc.poll() is None, f"the study ended before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "training did not finish epoch 1 in time"
        time.sleep(0.2)
    assert _kill_tree(proc) == -9 and not (run / "stages" / "train.json").exists()
    epochs_before = metrics.read_text().splitlines()
    crops = {p: p.stat().st_mtime_ns for p in (run / "crops").rglob("*.png")}
    assert crops, "no crops seen through the linked crop tree"

    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert all((run / "stages" / f"{s}.json").exists() for s in ("train", "evaluate"))
    assert all(p.stat().st_mtime_ns == t for p, t in crops.items()), "crops were rewritten"
    # finished epochs were not redone: their rows, timings included, are as they were; training went on from there
    after = metrics.read_text().splitlines()
    assert after[:len(epochs_before)] == epochs_before and len(after) > len(epochs_before)
    train_nb = (run / "notebooks" / STAGES["train"]).read_text()
    assert re.search(r"loaded weights from [^\n]*last\.pt \(checkpoint", train_nb), "training did not resume from last.pt"
    assert re.search(r"epochs (\d+)\.\.", train_nb).group(1) == str(len(epochs_before)), "training did not go on from the last finished epoch"
    assert not [p for pat in ("*.tmp", "*.tmp.*", "*.partial*") for p in run.rglob(pat)], "temp files left behind"

    # same results as the uninterrupted run, to the last digit
    import pandas as pd
    assert _metric_rows(metrics) == _metric_rows(sbi_run / "train" / "metrics.csv")
    test_metrics = lambda d: {k: v for k, v in json.loads((d / "test" / "metrics.json").read_text()).items() if k != "info"}
    assert test_metrics(run) == test_metrics(sbi_run)
    videos = lambda d: pd.read_csv(d / "test" / "videos.csv").drop(columns="folder")
    pd.testing.assert_frame_equal(videos(run), videos(sbi_run))


def test_docs_site_in_nbdev_manner(tmp_path):
    """The offline docs site (two pages and the index): executed from the notebooks themselves, never from a study run
    and never writing the library; show_doc signatures instead of exported source; no scaffolding, prompts, warnings,
    absolute paths or injected parameters; figures inline; a sidebar linking every page."""
    from build_docs import build
    lib = library_files()
    index = build(tmp_path / "_docs", pages=["00_data", "06_study"])
    assert library_files() == lib, "the docs build wrote the library"
    pages = {p: (tmp_path / "_docs" / f"{p}.html").read_text() for p in ("index", "00_data", "06_study")}
    assert index.name == "index.html"
    for name, html in pages.items():
        for other in pages: assert f"href='{other}.html'" in html, f"{name}.html's sidebar does not link {other}"
        assert not re.search(r"(In|Out)(&nbsp;| )\[\d*\]:", html), f"{name}.html shows prompts"
        assert str(ROOT) not in html and "injected-parameters" not in html, f"{name}.html shows this machine's paths or papermill's cell"
        assert not re.search(r"\b\w*Warning\b:", html), f"{name}.html shows a warning"
    data = pages["00_data"]
    text = re.sub(r"<[^>]+>", "", data)
    assert re.search(r'<h3[^>]*id="read_json_file"', data) and re.search(r"read_json_file\(\s*path\s*\)", text)  # signature
    assert "Parse a JSON file;" in text                                                                  # its docstring
    assert "json.JSONDecodeError" not in text and "from fastcore.test import" not in text  # no exported source, no scaffolding
    assert re.search(r'<img[^>]+src="data:image/png;base64,', data), "00_data.html has no inline figure"
    assert "#| export" not in data and "#| hide" not in data and "{target=" not in text
    assert re.search(r'<h3[^>]*id="study_notebook"', pages["06_study"])


SBI_DEMO = dict(num_epochs=2, max_videos=4, frames_per_video=8, explain_methods="fused,relevancy,attention,random",
                max_quality_images=48)  # the suite's cuts (sbi_run)


@pytest.fixture(scope="module")
def sbi_run(quick_run, tmp_path_factory) -> Path:
    """The demo's self-blended variant (issue 28, configs/study_quick_sbi.yaml) on the quick study's data stages (linked:
    no data stage reruns, and train, evaluate and quality only read them): trained on mini-forensics' 24 real training videos only, its fakes
    self-blended, validated on self-blended fakes of the 6 real validation videos, tested on all three methods, none
    seen. Cut for the suite's time (25 minutes in all; the full variant, 20 epochs at most on all 24 real videos, is
    `make study PARAMS=configs/study_quick_sbi.yaml`): 2 epochs on 4 of the 24 real training videos (an epoch of all 24
    took ~35 s here), 8 of the 16 frames per test video scored, and the quality pass on four maps (ours, relevancy,
    attention, random) on 48 test crops instead of nine maps on 384. At this size the detector is barely trained: the
    test asserts the code path and the table, not accuracy."""
    import yaml
    tmp = tmp_path_factory.mktemp("sbi")
    run = tmp / "sbi"
    run.mkdir()
    for d in ("mini_forensics", "index", "boxes", "crops"): (run / d).symlink_to(quick_run / d)   # read only here: linked
    params = {**yaml.safe_load((ROOT / "configs" / "study_quick_sbi.yaml").read_text()), **SBI_DEMO}
    (tmp / "sbi.yaml").write_text(yaml.safe_dump(params))
    cmd = [str(Path(sys.executable).parent / "deepfake-explain-study"), "--params", str(tmp / "sbi.yaml"),
           "--output", str(run), "--stages", "train,evaluate,quality"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"\nself-blended demo variant: train, evaluate, quality in {time.time() - t0:.0f} s")
    return run


def test_self_blended_variant_against_supervised(quick_run, sbi_run):
    """The self-blended detector trained on real faces only: its checkpoint and test report say `fakes: self-blended`,
    every test method is unseen, and the supervised-vs-self-blended table (video AUC per method, our map's pointing game
    and mass in mask) is written. The figures are reported (printed), only their presence and range are asserted."""
    import pandas as pd
    from deepfake_explain.checkpoint import read_checkpoint
    from deepfake_explain.self_blended import sbi_comparison
    ck = read_checkpoint(sbi_run / "train" / "best.pt")
    assert ck["provenance"]["fakes"] == "self-blended" and ck["provenance"]["methods"] == ["self-blended"]
    assert ck["provenance"]["generated_data"] and ck["config"]["training"]["fakes"] == "self-blended"
    split = ck["meta"]["dataset"]["train"]
    assert split["videos"] == 4 and split["fake_frames"] == split["real_frames"] == split["frames"] // 2   # 4 real videos only
    info = json.loads((sbi_run / "test" / "metrics.json").read_text())["info"]
    assert info["provenance"]["fakes"] == "self-blended"
    assert "fakes: self-blended" in (sbi_run / "report.html").read_text(), "the report does not say what the detector was trained on"
    pm = pd.read_csv(sbi_run / "test" / "per_method.csv", keep_default_na=False).set_index("method")
    assert pm.loc[["FaceSwapBlend", "MouthEyesEdit", "SelfBlended"], "in_training"].tolist() == ["no"] * 3
    table = sbi_comparison({"supervised": quick_run, "self-blended": sbi_run}, sbi_run)
    assert set(table.method) == {"FaceSwapBlend", "MouthEyesEdit", "SelfBlended", "All"} and len(table) == 8
    for col in ("video_auc", "fused_pointing_game", "fused_mass_in_mask"): assert table[col].between(0, 1).all(), table
    assert (sbi_run / "sbi_comparison.png").stat().st_size > 10_000
    print(table.round(3).to_string())
