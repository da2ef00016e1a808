"""mkdocs hook: the configuration reference page, generated from the schema at every build.

Each key of ``cluster_app.config.SCHEMA`` with its packaged default (``config.default``), its
valid values (``Field.describe``) and the comment beside it in ``cluster_app/cluster_app.yaml``.
Nothing on the page is written by hand, so it cannot drift from the code; a key that the YAML
and the schema disagree on fails the build.
"""

from __future__ import annotations

import html
import importlib
import json
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

from cluster_app import config as cfg

PAGE = "configuration.md"
YAML = Path(cfg.__file__).with_name("cluster_app.yaml")

INTRO = f"""# Configuration reference

Generated from `cluster_app/config.py` (`SCHEMA`: types and ranges) and
`cluster_app/cluster_app.yaml` (defaults and their comments) when the site is built.

Every key lives under `{cfg.PREFIX}:` and is read through `dask.config` when it is used,
so each usual override works, highest first:

- `dask.config.set({{"cluster-app.train.local-steps": 20}})` in Python;
- the environment: `DASK_CLUSTER_APP__TRAIN__LOCAL_STEPS=20` (`__` between levels, `-` as `_`);
- a YAML file under `~/.config/dask/` with the same `cluster-app:` layout.

Every read is validated: a wrong type or an out-of-range value raises `ConfigError` with the
full key and the valid range. `cluster-app config` prints the effective, validated
configuration. Keyword arguments of `AgentCluster.train` / `submit` / `serve` override the
keys of the same name for one call (`local_steps=` for `train.local-steps`).
"""


def split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)`` of one YAML line; a ``#`` inside quotes starts no comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def yaml_comments(text: str) -> dict[str, str]:
    """Dotted key below ``cluster-app`` -> the comment on its line, in the file's order."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    for line in text.splitlines():
        code, comment = split_comment(line)
        if not code.strip():
            continue
        indent = len(code) - len(code.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, code.strip().split(":", 1)[0]))
        if len(stack) > 1:
            out[".".join(key for _, key in stack[1:])] = comment
    return out


def text(s: str) -> str:
    """Plain text in a Markdown table cell."""
    s = html.escape(s, quote=False)
    for ch in "\\`*_|[]":
        s = s.replace(ch, "\\" + ch)
    return s


def value(v: Any) -> str:
    shown = v if isinstance(v, str) else json.dumps(v)
    return f"`{shown}`".replace("|", "\\|")


def reference(comments: dict[str, str]) -> str:
    groups = [k for k in comments if isinstance(cfg.default(k), dict)]
    leaves = [k for k in comments if k not in groups]
    missing, unknown = set(cfg.SCHEMA) - set(leaves), set(leaves) - set(cfg.SCHEMA)
    if missing or unknown:
        raise PluginError(
            f"cluster_app.yaml and config.SCHEMA disagree: not in the YAML {sorted(missing)}, "
            f"not in the schema {sorted(unknown)}"
        )
    lines = [INTRO]
    for group in groups:  # in the YAML's order, each with the keys directly below it
        lines += ["", f"{'#' * (group.count('.') + 2)} `{cfg.PREFIX}.{group}`", ""]
        if comments[group]:
            lines += [text(comments[group]), ""]
        rows = [k for k in leaves if k.rpartition(".")[0] == group]
        if rows:
            lines += ["| key | default | valid | meaning |", "|---|---|---|---|"]
        for key in rows:
            name, valid = key.rpartition(".")[2], text(cfg.SCHEMA[key].describe())
            lines.append(
                f"| `{name}` | {value(cfg.default(key))} | {valid} | {text(comments[key])} |"
            )
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    importlib.reload(cfg)  # `mkdocs serve` rebuilds in one process: read the schema anew
    content = reference(yaml_comments(YAML.read_text()))
    files.append(File.generated(config, PAGE, content=content))
    return files
