"""Render nbdev notebooks without Quarto: README.md from nbs/index.ipynb, HTML pages for the docs.

nbdev's own `nbdev_readme`/`nbdev_docs` need the Quarto binary, which cannot be installed offline.
These helpers apply the nbdev conventions that matter for reading: cells marked `#| hide` vanish,
`#| ...` directive lines are stripped from the code that is shown.
"""
from __future__ import annotations
import copy, re
from pathlib import Path
import nbformat

from deepfake_explain.study import cell_directives  # (one parser of nbdev directives, shared with the study runner)

ROOT = Path(__file__).resolve().parents[1]
_directive = re.compile(r"^\s*#\s*\|")


def readable(nb):
    "A copy of `nb` as readers see it: hidden cells dropped, directive lines removed."
    nb = copy.deepcopy(nb)
    cells = []
    for c in nb.cells:
        ds = cell_directives(c.source) if c.cell_type == "code" else {}
        if {"hide", "exporti"} & ds.keys(): continue
        if c.cell_type == "code":
            c.source = "\n".join(l for l in c.source.splitlines() if not _directive.match(l)).strip("\n")
            if "hide_input" in ds: c.source = ""
            if not c.source and not c.get("outputs"): continue
        cells.append(c)
    nb.cells = cells
    return nb


def render_readme(index_nb: Path = ROOT / "nbs" / "index.ipynb") -> str:
    "README.md text rendered from `index_nb` with nbconvert's Markdown exporter."
    from nbconvert import MarkdownExporter
    nb = readable(nbformat.read(index_nb, as_version=4))
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    return "<!-- Generated from nbs/index.ipynb by `python tools/nbrender.py`: edit the notebook, not this file. -->\n\n" + body


if __name__ == "__main__":
    (ROOT / "README.md").write_text(render_readme(), encoding="utf-8")
    print("wrote README.md")
