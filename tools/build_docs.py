"""Build the documentation site into _docs/, offline, in nbdev's manner.

With Quarto installed this is `nbdev_docs`. Quarto cannot be installed offline, so otherwise every notebook in nbs/
is executed here the way `nbdev_test` executes it and rendered with nbconvert:

- the cells `nbdev_test` skips (`notest`: the study's heavy stage cells) are shown, not run (their results are a
  study run's: its executed notebooks and report); no cell that calls nbdev's export runs, so building the docs never
  writes the library;
- each exported function or class appears as its `show_doc` signature and docstring, not as its source (as in
  nbdev's sites), unless the notebook already calls `show_doc` on it;
- scaffolding (`#| hide`, `#| exporti`, `#| default_exp`) is left out, directive lines are removed, warnings written to
  stderr are dropped, prompts (`In [n]:`) are not shown;
- figures are inline (base64), and every page has a sidebar to the others.

The site depends only on the notebooks: never on a study run (outputs/). `--pages 00_data,06_study` builds some pages.
"""
from __future__ import annotations
import argparse, ast, copy, html, re, shutil, subprocess, sys, time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))
from nbrender import ROOT  # noqa: E402

from deepfake_explain.study import cell_directives  # noqa: E402  (one parser of nbdev directives)

NBS = ROOT / "nbs"
HIDDEN = {"hide", "exporti", "default_exp"}
EXPORTED = {"export", "exports"}
EXPORT_CALL = "nbdev_export" + "("  # split, so that nbdev_test does not skip this file's cells when pasted


def page_name(nb_path: Path) -> str:
    return "index.html" if nb_path.stem == "index" else nb_path.stem + ".html"


def title_of(nb) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            for line in c.source.splitlines():
                if line.startswith("# "): return line[2:].strip()
    return "untitled"


def skip_flags() -> set[str]:
    "The directives `nbdev_test` skips (settings.ini's tst_flags)."
    from nbdev.config import get_config
    return set(str(get_config().get("tst_flags", "notest")).split())


def runs_here(cell, skip: set) -> bool:
    "Whether the docs build executes `cell`: as nbdev_test would (no export call)."
    if cell.cell_type != "code" or EXPORT_CALL in cell.source: return False
    d = cell_directives(cell.source)
    return d.get("eval", "").lower() != "false" and not (skip & d.keys())


def public_names(source: str) -> list[str]:
    "The public functions and classes an export cell defines, in order."
    try: tree = ast.parse(source)
    except SyntaxError: return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not n.name.startswith("_")]


def execute(nb_path: Path):
    """`nb_path` executed in nbs/ like `nbdev_test` (an error stops the build, naming the notebook), with `show_doc`
    outputs made for the exported names no cell documents."""
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    nb, skip = read_nb(nb_path), skip_flags()
    sh = CaptureShell(nb_path)
    with working_directory(NBS):
        sh.run_all(nb, exc_stop=True, preproc=lambda c: not runs_here(c, skip))
        documented = set(re.findall(r"show_doc\((\w+)", "\n".join(c.source for c in nb.cells if c.cell_type == "code")))
        sh.run("from nbdev.showdoc import show_doc")
        for c in nb.cells:
            if c.cell_type == "code" and EXPORTED & cell_directives(c.source).keys():
                c["doc_outputs"] = [o for name in public_names(c.source) if name not in documented
                                    for o in sh.run(f"show_doc({name})")]
    return nb


def readable(nb) -> nbformat.NotebookNode:
    "The executed notebook as a reader sees it: scaffolding out, exports as their show_doc, no stderr, no directives."
    skip, cells = skip_flags(), []
    for c in nb.cells:
        if c.cell_type != "code":
            cells.append(nbformat.v4.new_markdown_cell(c.source)); continue
        d = cell_directives(c.source)
        if HIDDEN & d.keys() or EXPORT_CALL in c.source: continue
        outputs = [_clean_output(o) for o in c.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        if EXPORTED & d.keys():
            cells += [nbformat.v4.new_markdown_cell(_output_markdown(o)) for o in c.get("doc_outputs", [])]
            continue
        src = "\n".join(l for l in c.source.splitlines() if not l.lstrip().startswith("#|")).strip("\n")
        if "parameters" in c.get("metadata", {}).get("tags", []):
            cells.append(nbformat.v4.new_markdown_cell("**Parameters** (the quick defaults; a study passes its own):"))
        elif skip & d.keys():
            cells.append(nbformat.v4.new_markdown_cell("*Not run when the docs are built: this cell runs in a study "
                                                       "(its results are in a study run's notebooks and report).*"))
        if re.fullmatch(r"(\s*show_doc\([^()]*\)\s*)+", src):  # a show_doc call: its output only, as nbdev shows it
            cells += [nbformat.v4.new_markdown_cell(_output_markdown(o)) for o in outputs]
            continue
        cell = nbformat.v4.new_code_cell(src)
        cell.outputs = [_as_node(o) for o in outputs]
        if src or cell.outputs: cells.append(cell)
    out = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.get("metadata", {})))
    return out


def _joined(v): return "".join(v) if isinstance(v, list) else v


def _as_node(o) -> nbformat.NotebookNode:
    "An execnb output (text as lists of lines) as nbformat holds it in memory (strings)."
    o = dict(o)
    if "text" in o: o["text"] = _joined(o["text"])
    if "data" in o: o["data"] = {k: _joined(v) for k, v in o["data"].items()}
    if "traceback" in o: o["traceback"] = list(o["traceback"])
    return nbformat.from_dict(o)


def _clean_output(o):
    "An output without Quarto's link attributes in its Markdown."
    if "text/markdown" in o.get("data", {}):
        o = {**o, "data": {**o["data"], "text/markdown": _output_markdown(o)}}
    return o


def _output_markdown(o) -> str:
    data = o.get("data", {})
    text = data.get("text/markdown") or data.get("text/plain") or ""
    text = "".join(text) if isinstance(text, list) else text
    return re.sub(r"\{target=[^}]*\}", "", text)  # Quarto's link attributes (show_doc's source link), raw text here


SIDEBAR_CSS = """<style>
body{margin:0}
.site-nav{position:fixed;top:0;left:0;bottom:0;width:15rem;overflow:auto;padding:1rem;background:#f6f7f9;
          border-right:1px solid #ddd;font:14px/1.5 sans-serif}
.site-nav a{display:block;padding:.2rem .4rem;color:#234;text-decoration:none;border-radius:4px}
.site-nav a.current{background:#dde6f3;font-weight:600}
.site-nav .site-title{font-weight:700;font-size:16px;margin-bottom:.6rem}
div.site-main{margin-left:17rem;max-width:1100px}
</style>"""


def sidebar(items, current: str) -> str:
    cur = lambda href: " class='current'" if href == current else ""
    links = "".join(f"<a href='{html.escape(href)}'{cur(href)}>{html.escape(t)}</a>" for href, t in items)
    return f"<nav class='site-nav'><div class='site-title'>deepfake_explain</div>{links}</nav>"


def build(out: Path, pages: list[str] | None = None) -> Path:
    from nbconvert import HTMLExporter
    if shutil.which("quarto") and pages is None:
        subprocess.run([str(Path(sys.executable).parent / "nbdev_docs")], cwd=ROOT, check=True)
        return ROOT / "_docs" / "index.html"
    notebooks = sorted(NBS.glob("*.ipynb"), key=lambda p: (p.stem != "index", p.stem))
    if pages: notebooks = [p for p in notebooks if p.stem in pages or p.stem == "index"]
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    shown = {}
    for p in notebooks:
        t0 = time.time()
        shown[p] = readable(execute(p))
        print(f"[docs] {p.name}: executed in {time.time() - t0:.0f}s", flush=True)
    items = [(page_name(p), title_of(nb)) for p, nb in shown.items()]
    for p, nb in shown.items():
        body, _ = exporter.from_notebook_node(nb)
        body = body.replace("</head>", SIDEBAR_CSS + "</head>", 1)
        i = body.find(">", body.find("<body")) + 1
        j = body.rfind("</body>")
        body = body[:i] + sidebar(items, page_name(p)) + "<div class='site-main'>" + body[i:j] + "</div>" + body[j:]
        tmp = out / f".{page_name(p)}.tmp"
        tmp.write_text(body, encoding="utf-8"); tmp.replace(out / page_name(p))
    print(f"[docs] {len(shown)} pages in {out} (offline renderer)")
    return out / "index.html"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "_docs")
    ap.add_argument("--pages", default=None, help="comma list of notebook names to build (default: all), e.g. 00_data")
    a = ap.parse_args(argv)
    print(build(a.out, a.pages.split(",") if a.pages else None))


if __name__ == "__main__":
    main()
