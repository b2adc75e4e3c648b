"""Consistency checks that fail the build (run by `make test`).

1. The library equals what `nbdev_export` produces from the notebooks (a hand edit of
   deepfake_explain/*.py is caught, and not overwritten: export runs in a temporary copy).
2. The notebooks are clean: `nbdev_clean` leaves no diff.
3. README.md equals its rendering from nbs/index.ipynb.
"""
from __future__ import annotations
import filecmp, shutil, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from nbrender import ROOT, render_readme

BIN = Path(sys.executable).parent
LIB = "deepfake_explain"


def _copy_project(dst: Path):
    for name in ("settings.ini", "setup.py"): shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(ROOT / "nbs", dst / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / LIB, dst / LIB, ignore=shutil.ignore_patterns("__pycache__"))


def _files(d: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob(pattern))
            if "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts}


def _diff(label: str, want: dict, have: dict) -> list[str]:
    probs = []
    for k in sorted(set(want) | set(have)):
        if k not in have: probs.append(f"{label}: {k} would be created")
        elif k not in want: probs.append(f"{label}: {k} is not produced by the notebooks")
        elif want[k] != have[k]: probs.append(f"{label}: {k} differs")
    return probs


def main() -> int:
    problems = []
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        _copy_project(td)
        subprocess.run([str(BIN / "nbdev_export")], cwd=td, check=True)
        problems += _diff("nbdev_export", _files(td / LIB, "*.py"), _files(ROOT / LIB, "*.py"))
        subprocess.run([str(BIN / "nbdev_clean")], cwd=td, check=True)
        problems += _diff("nbdev_clean", _files(td / "nbs", "*.ipynb"), _files(ROOT / "nbs", "*.ipynb"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else ""
    if readme != render_readme(): problems.append("README.md differs from nbs/index.ipynb: run `python tools/nbrender.py`")
    for p in problems: print("CONSISTENCY FAIL:", p)
    if problems:
        print("Library code lives in nbs/*.ipynb: edit there, then `make export` (nbdev_export + nbdev_clean).")
        return 1
    print("consistency: library == nbdev_export(nbs), notebooks clean, README == index.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
