"""Every ```python block of README.md and docs/*.md runs as pasted into a script.

Each block is written to a file in an empty directory and run there with this interpreter, as a
reader would run it. A block that is deliberately not runnable says so on the line before its
fence (``<!-- not-run: why -->``) and is listed in ``NOT_RUN`` below, so none goes unnoticed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN_MARK = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")
TIMEOUT = 300  # seconds per example; each takes well under two minutes on 2 cores

# (page, reason) of every block marked not-run, in page order
NOT_RUN: list[tuple[str, str]] = []


@dataclass(frozen=True)
class Example:
    page: str
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def examples(path: Path) -> list[Example]:
    """The ```python blocks of one Markdown file."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            before = next((s for s in reversed(lines[:i]) if s.strip()), "")
            mark = NOT_RUN_MARK.search(before)
            code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
            page = str(path.relative_to(ROOT))
            found.append(Example(page, i + 1, code, mark.group(1) if mark else None))
            i = end
        i += 1
    return found


EXAMPLES = [e for page in PAGES for e in examples(page)]
# a block pasted in two places runs once, under the id of its first place
RUNNABLE = list({e.code: e for e in reversed(EXAMPLES) if e.not_run is None}.values())[::-1]


def run_script(code: str, cwd: Path) -> tuple[int | None, str]:
    """Exit code (None: killed at the timeout, with every process it started) and output."""
    (cwd / "example.py").write_text(code)
    env = {
        **os.environ,
        # isolation from anything else on this machine: free ports, nothing else changed
        "DASK_CLUSTER_APP__CLUSTER__DASHBOARD_ADDRESS": ":0",
        "DASK_CLUSTER_APP__SERVING__PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "example.py"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the workers go with it
    )
    try:
        output = proc.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return None, proc.communicate()[0]
    return proc.returncode, output


def test_the_pages_have_examples_and_the_blocks_not_run_are_the_listed_ones():
    assert {e.page for e in RUNNABLE} >= {"README.md", "docs/quickstart.md"}
    assert [(e.page, e.not_run) for e in EXAMPLES if e.not_run] == NOT_RUN


@pytest.mark.slow
@pytest.mark.parametrize("example", RUNNABLE, ids=[e.id for e in RUNNABLE])
def test_example_runs_as_a_script(example: Example, tmp_path: Path):
    code, output = run_script(example.code, tmp_path)
    assert code == 0, f"{example.id} (exit {code}):\n{example.code}\n{output[-6000:]}"
    assert "bootstrapping phase" not in output
