"""`make bench`: run every benchmark (benchmarks/bench_*.py), write outputs/bench/<date>.json and
print a table of the ratios. Each ratio is measured within one benchmark run, on one machine.

`run_all.py --device cuda` (`make bench DEVICE=cuda`) is the one device benchmark: in one run on that device it
measures training images/s (fp32, bf16 autocast, bf16 channels_last), inference images/s and MTCNN frames/s at 1080p
(bench_throughput), batched and one-image-at-a-time explanation for both layouts (bench_explain), and the loader's
images/s on an FF++-sized crop tree (bench_loader); writes outputs/bench/<date>_<device>.json and prints the targets as
PASS/FAIL lines. `--device cpu` runs the same set here; `--quick` makes every part smaller (the CPU in minutes).

    .venv/bin/python benchmarks/run_all.py                      # every benchmark, CPU (as before)
    .venv/bin/python benchmarks/run_all.py --device cuda        # the device benchmark on a GPU
    .venv/bin/python benchmarks/run_all.py --device cpu --quick
"""
from __future__ import annotations
import argparse, datetime as dt, importlib.util, json, sys, traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def flatten(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict): yield from flatten(v, key + ".")
        else: yield key, v


def run_one(path: Path, **kwargs) -> dict:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(**kwargs)


DEVICE_SET = ("bench_throughput", "bench_explain", "bench_loader")  # the device benchmark, in this order
TARGETS = {"seed_batched_vs_loop": 2.0, "spatial_batched_vs_inference": 0.5, "loader_8_workers_vs_training": 1.0}


def device_kwargs(name: str, device: str, quick: bool) -> dict:
    "The arguments of each part of the device benchmark: sized for a GPU, or small enough for this CPU."
    cuda = device.startswith("cuda")
    if name == "bench_throughput": return dict(device=device, quick=quick)
    if name == "bench_explain":
        return dict(device=device, batch_size=32 if cuda else 4 if quick else 8, iters=10 if cuda else 1 if quick else 3,
                    reference_images=0 if quick else 2)
    if name == "bench_loader":  # the training rate to compare with comes from bench_throughput
        return dict(device=device, train_iters=0, quick=quick, seconds=5.0 if quick else 8.0)
    return {}


def target_checks(results: dict) -> list[tuple[str, float | None, float, bool | None]]:
    "(name, measured ratio, target, met) of each target of the device benchmark (None where a part did not run)."
    def get(*keys):
        d = results
        for k in keys:
            if not isinstance(d, dict) or k not in d: return None
            d = d[k]
        return d
    seed = get("bench_explain", "layouts", "seed", "ratios", "batched_vs_loop_ratio")
    spatial = get("bench_explain", "layouts", "spatial", "ratios", "explain_batched_vs_inference_ratio")
    w8, train = get("bench_loader", "loader", "8", "images_per_s"), get("bench_throughput", "training_best", "images_per_s")
    loader = w8 / train if w8 is not None and train else None
    out = []
    for name, v in zip(TARGETS, (seed, spatial, loader)):
        out.append((name, v, TARGETS[name], None if v is None else v >= TARGETS[name]))
    return out


def main(only: list[str] | None = None, device: str | None = None, quick: bool = False) -> dict:
    results, failed = {}, []
    names = list(only) if only else list(DEVICE_SET) if device else [p.stem for p in sorted(HERE.glob("bench_*.py"))]
    for name in names:
        path = HERE / f"{name}.py"
        print(f"=== {name}", flush=True)
        try: results[name] = run_one(path, **(device_kwargs(name, device, quick) if device else {}))
        except Exception:
            traceback.print_exc(); failed.append(name); results[name] = {"error": traceback.format_exc()}
    if device:
        checks = target_checks(results)
        results["targets"] = {n: {"ratio": v, "target": t, "met": ok} for n, v, t, ok in checks}
        w8, tr = (results.get("bench_loader", {}).get("loader", {}).get("8", {}).get("images_per_s"),
                  results.get("bench_throughput", {}).get("training_best", {}))
        print(f"\ntargets on {device}" + (" (2 shared CPU cores: the GPU targets are not expected to hold here)" if not device.startswith("cuda") else ""))
        for n, v, t, ok in checks:
            print(f"{'PASS' if ok else 'FAIL' if ok is not None else 'SKIP'} {n}: {'-' if v is None else f'{v:.2f}'} (target >= {t:g})")
        if w8 and tr: print(f"     loader 8 workers {w8:.0f} images/s, training ({tr['setting']}) {tr['images_per_s']:.1f} images/s")
    stem = f"{dt.datetime.now():%Y-%m-%d}" + (f"_{device.replace(':', '')}" if device else "")
    out = ROOT / "outputs" / "bench" / f"{stem}.json"
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
    ap = argparse.ArgumentParser(description="Run the benchmarks (all, the named ones, or the device benchmark with --device).")
    ap.add_argument("names", nargs="*", help="benchmarks to run (bench_*), default: all, or with --device the device set")
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N: the device benchmark on this device")
    ap.add_argument("--quick", action="store_true", help="smaller sizes: the device benchmark on a CPU in minutes")
    a = ap.parse_args()
    main(a.names or None, a.device, a.quick)
