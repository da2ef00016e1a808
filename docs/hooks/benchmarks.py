"""mkdocs hook: the committed benchmark results, brought into the site at every build.

- Each ``benchmarks/results/<name>.png`` becomes the site file ``assets/benchmarks/<name>.png``
  (nothing is copied into ``docs/``), and a page's link to ``../benchmarks/results/<name>.png``
  (which GitHub renders in place) is pointed at it.
- ``{{ bench.<name>.<figure> }}`` (optionally ``{{ bench.<name>.<figure>:<format spec>}}``) is
  the figure's value in ``benchmarks/results/<name>.json``'s ``headline``; an unknown one fails
  the build.
- ``<!-- bench-table: <name> -->`` becomes a table of every headline figure of ``<name>``, with
  the machine and the date of the run.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
ASSETS = "assets/benchmarks"
PLOT = re.compile(r"\]\(((?:\.\./)+)benchmarks/results/([\w.-]+\.png)\)")
FIGURE = re.compile(r"\{\{\s*bench\.(\w+)\.(\w+)(?::([^}]*))?\s*\}\}")
TABLE = re.compile(r"<!--\s*bench-table:\s*(\w+)\s*-->")


@cache
def result(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise PluginError(f"no benchmark result {path}")
    return json.loads(path.read_text())


def figure(name: str, key: str, spec: str | None) -> str:
    headline = result(name)["headline"]
    if key not in headline:
        raise PluginError(f"{name}.json has no headline figure {key!r}; it has {sorted(headline)}")
    return format(headline[key], spec.strip()) if spec else str(headline[key])


def table(name: str) -> str:
    r = result(name)
    machine = ", ".join(f"{k} {v}" for k, v in r.get("machine", {}).items())
    rows = [f"| `{k}` | {v} |" for k, v in r["headline"].items()]
    created = r.get("created", "")
    head = f"Every headline figure of `benchmarks/results/{name}.json` ({created}; {machine}):"
    return "\n".join([head, "", "| figure | value |", "|---|---|", *rows])


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"{ASSETS}/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    depth = page.file.src_uri.count("/")  # the page's folders below docs/

    def plot(m: re.Match) -> str:
        if len(m.group(1)) != 3 * (depth + 1):  # not the repository's benchmarks/results
            return m.group(0)
        return f"]({'../' * depth}{ASSETS}/{m.group(2)})"

    markdown = PLOT.sub(plot, markdown)
    markdown = FIGURE.sub(lambda m: figure(*m.groups()), markdown)
    return TABLE.sub(lambda m: table(m.group(1)), markdown)
