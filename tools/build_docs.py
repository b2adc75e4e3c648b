"""Build the documentation site into _docs/.

With Quarto installed this is `nbdev_docs`. Quarto cannot be installed offline, so otherwise the
site is rendered with nbconvert: every notebook in nbs/ as an HTML page with its outputs (figures,
`show_doc` API docs), a navigation bar, and an index page made from nbs/index.ipynb (the README).
Executed notebooks are taken from a study run (`--run outputs/<run-id>`, default: the latest run)
so the pipeline is not executed twice; notebooks missing there are executed here with their quick
defaults.
"""
from __future__ import annotations
import argparse, html, shutil, subprocess, sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))
from nbrender import ROOT, readable

NBS = ROOT / "nbs"


def page_name(nb_path: Path) -> str:
    return "index.html" if nb_path.stem == "index" else nb_path.stem + ".html"


def title_of(nb) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            for line in c.source.splitlines():
                if line.startswith("# "): return line[2:].strip()
    return "untitled"


def latest_run() -> Path | None:
    marker = ROOT / "outputs" / "LATEST"
    if marker.exists():
        run = ROOT / "outputs" / marker.read_text().strip()
        if (run / "notebooks").is_dir(): return run
    return None


def executed(nb_path: Path, run: Path | None, scratch: Path):
    "The executed version of a notebook: from the run if there, else executed now with its defaults."
    if run is not None and (run / "notebooks" / nb_path.name).exists():
        return nbformat.read(run / "notebooks" / nb_path.name, as_version=4)
    import papermill as pm
    from deepfake_explain.study import ensure_kernel
    out = scratch / nb_path.name
    print(f"[docs] executing {nb_path.name}", flush=True)
    pm.execute_notebook(str(nb_path), str(out), kernel_name=ensure_kernel(), language="python",
                        cwd=str(NBS), progress_bar=False)
    return nbformat.read(out, as_version=4)


def build(out: Path, run: Path | None) -> Path:
    from nbconvert import HTMLExporter
    notebooks = sorted(NBS.glob("*.ipynb"))
    if shutil.which("quarto"):
        subprocess.run([str(Path(sys.executable).parent / "nbdev_docs")], cwd=ROOT, check=True)
        return ROOT / "_docs" / "index.html"
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "_executed"
    scratch.mkdir(exist_ok=True)
    nbs = {p: executed(p, run, scratch) for p in notebooks}
    nav_items = [(page_name(p), title_of(nb)) for p, nb in nbs.items()]
    nav = "<nav class='site-nav'>" + " | ".join(
        f"<a href='{html.escape(href)}'>{html.escape(t)}</a>" for href, t in nav_items) + "</nav><hr>"
    exporter = HTMLExporter(template_name="lab")
    for p, nb in nbs.items():
        body, _ = exporter.from_notebook_node(readable(nb))
        body = body.replace("<body", "<body", 1)
        i = body.find(">", body.find("<body")) + 1
        (out / page_name(p)).write_text(body[:i] + nav + body[i:], encoding="utf-8")
    shutil.rmtree(scratch)
    print(f"[docs] {len(nbs)} pages in {out} (offline renderer; run: {run})")
    return out / "index.html"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="study run folder holding executed notebooks (default: latest)")
    ap.add_argument("--out", type=Path, default=ROOT / "_docs")
    a = ap.parse_args(argv)
    print(build(a.out, a.run or latest_run()))


if __name__ == "__main__":
    main()
