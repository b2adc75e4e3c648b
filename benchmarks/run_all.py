"""`make bench`: run every benchmark (benchmarks/bench_*.py), write outputs/bench/<date>.json and
print a table of the ratios. Each ratio is measured within one benchmark run, on one machine."""
from __future__ import annotations
import datetime as dt, importlib.util, json, sys, traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def flatten(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict): yield from flatten(v, key + ".")
        else: yield key, v


def run_one(path: Path) -> dict:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main()


def main(only: list[str] | None = None) -> dict:
    results, failed = {}, []
    for path in sorted(HERE.glob("bench_*.py")):
        if only and path.stem not in only: continue
        print(f"=== {path.stem}", flush=True)
        try: results[path.stem] = run_one(path)
        except Exception:
            traceback.print_exc(); failed.append(path.stem); results[path.stem] = {"error": traceback.format_exc()}
    out = ROOT / "outputs" / "bench" / f"{dt.datetime.now():%Y-%m-%d}.json"
    sys.path.insert(0, str(ROOT))
    from deepfake_explain.data import write_json_atomic
    from deepfake_explain.study import environment_info
    if only and out.exists():  # a partial run updates today's file instead of replacing the other benchmarks
        results = {**json.loads(out.read_text()).get("results", {}), **results}
    write_json_atomic(out, {"environment": environment_info(ROOT), "results": results})
    print("\n| benchmark | ratio | value |\n|---|---|---|")
    for name, res in results.items():
        for k, v in flatten(res):
            if "ratio" in k.lower() and isinstance(v, (int, float, bool)): print(f"| {name} | {k} | {v:.3g} |" if not isinstance(v, bool) else f"| {name} | {k} | {v} |")
    print(f"\nwrote {out}")
    if failed: print(f"FAILED: {failed}"); sys.exit(1)
    return results


if __name__ == "__main__":
    main(sys.argv[1:] or None)
