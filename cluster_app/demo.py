"""The main job: a local fleet learns to complete Python from the standard library's sources.

Starts a local cluster, trains the character-level code model for about a minute, commits the
result to the registry's ``prod`` branch (with its eval report) and serves it over HTTP, then
prints a summary (rounds, steps/s, loss start -> end, held-out loss against a unigram baseline,
the exact match of its completions on held-out code against a character n-gram baseline built
from the same training text, peak memory of every process) and completions of real Python
prompts fetched through the HTTP API, and saves a loss-curve PNG and a JSON summary.
``cluster-app demo`` and ``jobs/train_codelm.py`` both run this.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from cluster_app.agent.data import CodeCorpus, load_dataset
from cluster_app.agent.ngram import NgramModel
from cluster_app.cluster import AgentCluster
from cluster_app.memory import PeakMemory
from cluster_app.runs import TrainResult
from cluster_app.versions.gate import EvalSpec

__all__ = ["PROMPTS", "plot_losses", "run_demo"]

PROMPTS = [
    "import os\nimport ",
    "    def __init__(self",
    "for i in range(",
    "        return self.",
    "if __name__ == ",
]
GIB = 1024**3
NGRAM_ORDER = 7


def plot_losses(result: TrainResult, path: str) -> None:
    """Save the per-round training loss with held-out and unigram-baseline levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = [r.round + 1 for r in result.rounds]
    ax.plot(rounds, result.loss_curve, marker="o", label="train loss (mean over agents)")
    ax.axhline(
        result.eval_end["loss"],
        color="C2",
        ls="--",
        label=f"held-out loss, end ({result.eval_end['loss']:.3f})",
    )
    ax.axhline(
        result.eval_end["baseline_loss"],
        color="C3",
        ls=":",
        label=f"unigram baseline ({result.eval_end['baseline_loss']:.3f})",
    )
    ax.set_xlabel("round")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title(f"{result.run_id}: {len(result.rounds)} rounds, {result.steps} agent steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(
    n_workers: int = 4,
    seconds: float = 60.0,
    out: str = "demo-output",
    local_steps: int | None = None,
    console: Console | None = None,
) -> dict:
    """Run the demo and return its summary dict (also written to ``<out>/summary.json``)."""
    console = console or Console()
    os.makedirs(out, exist_ok=True)
    store = os.path.join(out, "store")
    with PeakMemory() as mem, AgentCluster(n_workers=n_workers, store_url=store) as ac:
        result = ac.train(rounds=10**6, max_seconds=seconds, local_steps=local_steps)
        commit = ac.versions.commit_run(result.run_id, branch="prod", message="the demo's model")
        serving = ac.serve("prod", port=0)
        completions = {p: serving.complete(p, max_tokens=32) for p in PROMPTS}  # over HTTP
        served_at = serving.url
    spec = EvalSpec(**commit.eval["spec"])
    data = load_dataset(commit.config["agent"]["dataset"], **commit.config["agent"]["data_kwargs"])
    assert isinstance(data, CodeCorpus)  # the demo trains the code model
    ngram = NgramModel(data.train, order=NGRAM_ORDER)
    ngram_exact = ngram.exact_match(data, spec.batches, spec.batch_size, spec.completion_chars)
    summary = result.summary()
    summary.update(
        commit=commit.id,
        eval=commit.metrics,
        exact_match=commit.metrics["exact_match"],
        ngram_exact_match=ngram_exact,
        completion_chars=spec.completion_chars,
        served_at=served_at,
        peak_memory_gib=round(mem.peak / GIB, 3),
        n_workers=n_workers,
        completions=completions,
        loss_curve=result.loss_curve.tolist(),
        rounds_detail=[asdict(r) for r in result.rounds],
    )
    plot_losses(result, os.path.join(out, "loss.png"))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    table = Table(title="cluster_app demo: code-completion agents")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in [
        (
            "workers: active agents + hot standbys",
            f"{len(result.rounds[-1].workers)} + {len(result.rounds[-1].standby)}",
        ),
        ("rounds", summary["rounds"]),
        ("agent steps", summary["agent_steps"]),
        ("steps/s (all agents)", f"{summary['steps_per_s']:.1f}"),
        (
            "train loss start -> end",
            f"{summary['train_loss_start']:.3f} -> {summary['train_loss_end']:.3f}",
        ),
        (
            "held-out loss start -> end",
            f"{summary['heldout_loss_start']:.3f} -> {summary['heldout_loss_end']:.3f}",
        ),
        ("unigram baseline (held-out)", f"{summary['baseline_loss']:.3f}"),
        (
            f"exact match, {spec.completion_chars}-char completions of held-out code",
            f"{summary['exact_match']:.1%} (a {NGRAM_ORDER}-gram of the same text: "
            f"{ngram_exact:.1%})",
        ),
        ("committed to prod", commit.short),
        ("peak memory, all processes", f"{summary['peak_memory_gib']:.2f} GiB"),
        ("wall time", f"{summary['wall_seconds']:.0f} s"),
    ]:
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"completions served at {served_at}/v1/completions (the HTTP API):")
    for prompt, text in completions.items():
        console.print(f"[bold]{prompt!r}[/bold] -> {text!r}")
    beat = summary["heldout_loss_end"] < summary["baseline_loss"]
    console.print(
        f"held-out loss {summary['heldout_loss_end']:.3f} is "
        f"{'below' if beat else 'NOT below'} the unigram baseline {summary['baseline_loss']:.3f}; "
        f"plot: {os.path.join(out, 'loss.png')}"
    )
    return summary
