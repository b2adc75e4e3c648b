"""How much the quick study's learned-model figures vary with the CPU thread count and the seed.

`tests/test_study.py` asserts figures of a model trained on the CPU it runs on; floating-point
results change with the thread count and the processor (summation order), so a comparison is only
asserted where its margin is larger than the variation measured here. This tool reruns the quick
study's learned stages (train, evaluate, explain) on the data stages of one finished quick run
(mini-forensics, index, boxes, crops: deterministic, checked in test_mini_forensics) for every
(seed, threads) pair, and writes one row per run and comparison:

    .venv/bin/python tools/quick_variation.py --source outputs/quick --out outputs/variation \
        --seeds 0 1 2 --threads 1 2 --parallel 2

Output: `<out>/variation.csv` (every run's figures), `<out>/variation_summary.csv` and `.md`
(per figure with a bound: min, max, range across runs, the margin of the worst run over the bound,
and whether that margin is larger than the range: then test_study asserts it)."""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("mini_forensics", "index", "boxes", "crops")
LEARNED_STAGES = "train,evaluate,explain"


def prepare(source: Path, run: Path, seed: int) -> Path:
    "Copy the data stages of a finished quick run into `run`; write its parameters (the quick study's, with `seed`)."
    for d in DATA_STAGES:
        if not (run / d).exists(): shutil.copytree(source / d, run / d, symlinks=True)
    p = yaml.safe_load((ROOT / "configs" / "study_quick.yaml").read_text())
    p["seed"] = seed
    params = run / "variation_params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=True))
    return params


def run_one(source: Path, out: Path, seed: int, threads: int) -> Path:
    "One quick study's learned stages with `threads` torch threads (OMP_NUM_THREADS, inherited by the kernel)."
    run = out / f"seed{seed}_threads{threads}"
    if (run / "stages" / "explain.json").exists(): return run
    params = prepare(source, run, seed)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [str(Path(sys.executable).parent / "deepfake-explain-study"), "--params", str(params), "--output", str(run),
           "--stages", LEARNED_STAGES]
    t0 = time.time()
    with open(run / "variation.log", "w") as log: r = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode: raise RuntimeError(f"{run}: study failed (exit {r.returncode}); see {run / 'variation.log'}")
    print(f"seed {seed}, {threads} thread(s): {time.time() - t0:.0f}s", flush=True)
    return run


def figures(run: Path) -> dict:
    "The figures test_study asserts or reports, from one run folder."
    m = json.loads((run / "test" / "metrics.json").read_text())
    row = {"video_auc": m["auc"]}
    q = pd.read_csv(run / "explanation" / "quality.csv").set_index("method")
    for method in q.index:
        for k in ("pointing_game", "mass_in_mask", "pixel_auroc", "pos_auc_prob", "neg_auc_prob"):
            if k in q.columns: row[f"{method}.{k}"] = q.loc[method, k]
    d = pd.read_csv(run / "explanation" / "quality_vs_baselines.csv")
    for _, r in d.iterrows():
        for col in ("advantage", "ci_low", "ci_high"):
            if col in d.columns: row[f"vs_{r.baseline}.{r.metric}.{col}"] = r[col]
    return row


def bound_of(figure: str) -> float | None:
    "The bound test_study would assert a figure above: the AUC target, or 0 for the lower end of a paired CI."
    return 0.9 if figure == "video_auc" else 0.0 if figure.endswith(".ci_low") else None


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per figure with a bound: min, max and range across runs, the margin (worst run minus bound) and whether the
    margin is larger than the range, the rule by which test_study asserts a figure."""
    num = df.drop(columns=["seed", "threads"])
    s = pd.DataFrame({"min": num.min(), "max": num.max()})
    s["range"] = s["max"] - s["min"]
    s["bound"] = [bound_of(k) for k in s.index]
    s = s.dropna(subset=["bound"])
    s["margin"] = s["min"] - s["bound"]
    s["asserted"] = (s["margin"] > 0) & (s["margin"] > s["range"])
    return s


def markdown(s: pd.DataFrame) -> str:
    "The summary as a markdown table (no tabulate needed)."
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| figure | " + " | ".join(s.columns) + " |", "|---" * (len(s.columns) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(fmt(v) for v in row) + " |" for k, row in zip(s.index, s.itertuples(index=False))]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=str(ROOT / "outputs" / "quick"), help="a finished quick study run folder")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "variation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (use cores // threads)")
    a = ap.parse_args(argv)
    source, out = Path(a.source).resolve(), Path(a.out).resolve()
    missing = [d for d in DATA_STAGES if not (source / d).is_dir()]
    if missing: sys.exit(f"{source}: not a finished quick run (missing {', '.join(missing)}); run `make study` first")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, t) for t in sorted(a.threads) for s in a.seeds]
    with ThreadPoolExecutor(a.parallel) as ex:
        runs = list(ex.map(lambda j: (j, run_one(source, out, *j)), jobs))
    df = pd.DataFrame([{"seed": s, "threads": t, **figures(r)} for (s, t), r in runs])
    df.to_csv(out / "variation.csv", index=False)
    s = summarise(df)
    s.to_csv(out / "variation_summary.csv")
    (out / "variation_summary.md").write_text(markdown(s))
    print(s.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
