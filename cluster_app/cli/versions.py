"""``cluster-app versions ...``: the model registry from the shell.

Exit codes scripts can rely on: 0 done; 1 an error (named on stderr: an unknown ref, missing
or corrupt data); 2 bad usage or a bad argument (click's, an invalid ref name, a rollback
target that was never on the branch); 3 refused on evidence (the gate refused a promotion, or
a merge's eval regressed); 4 a conflict (the ref moved meanwhile, or the branch or tag exists).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from cluster_app import config
from cluster_app.cli._common import errors as _errors

__all__ = ["versions"]


def _registry(store: str | None):
    from cluster_app.runs.versions import Versions

    return Versions(config.get("store.url", store))


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


_store = click.option("--store", default=None, help="Store URL (default: cluster-app.store.url).")
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_author = click.option("--author", default=None, help="Recorded author (default: login name).")
_message = click.option("-m", "--message", default="", help="Recorded message.")


@click.group()
def versions() -> None:
    """Model versions: commits, branches, tags, gated promotion, rollback, merges, GC."""


@versions.command()
@click.argument("run")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=0),
    default=None,
    help="The run's version (default: its newest).",
)
@click.option("-b", "--branch", default="dev", show_default=True)
@click.option("--no-eval", is_flag=True, help="Commit without an eval report.")
@_message
@_author
@_store
@_errors
def commit(run, version, branch, no_eval, message, author, store) -> None:
    """Commit a version of RUN (a run id in the store, or a run URL) to a branch."""
    c = _registry(store).commit_run(
        run, version, branch=branch, message=message, author=author, evaluate=not no_eval
    )
    click.echo(f"{c.id} on {branch}: {c.message} {c.metrics}")


@versions.command()
@click.argument("rev", default="dev")
@click.option("-n", "limit", type=click.IntRange(min=1), default=None, help="At most N commits.")
@_json
@_store
@_errors
def log(rev, limit, as_json, store) -> None:
    """Commits reachable from REV, newest first."""
    commits = _registry(store).log(rev, limit)
    if as_json:
        _echo_json([asdict(c) for c in commits])
        return
    for c in commits:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in c.metrics.items())
        click.echo(f"{c.short}  {c.author:<10} {c.message}  {metrics}")


@versions.command()
@click.argument("rev")
@_store
@_errors
def show(rev, store) -> None:
    """One commit, whole (JSON)."""
    _echo_json(asdict(_registry(store).get(rev)))


@versions.command()
@click.argument("a")
@click.argument("b")
@_store
@_errors
def diff(a, b, store) -> None:
    """Config diff, per-layer parameter change norms and eval deltas from A to B (JSON)."""
    _echo_json(_registry(store).diff(a, b))


@versions.command()
@_json
@_store
@_errors
def refs(as_json, store) -> None:
    """Branches and tags with the commits they point at."""
    reg = _registry(store)
    out = {"branches": reg.branches(), "tags": reg.tags()}
    if as_json:
        _echo_json(out)
        return
    for kind, names in out.items():
        for name, cid in names.items():
            click.echo(f"{kind[:-2] if kind == 'branches' else 'tag':<7} {name:<24} {cid[:12]}")


@versions.command()
@click.argument("name")
@_store
@_errors
def reflog(name, store) -> None:
    """Every move of branch or tag NAME, oldest first."""
    for e in _registry(store).reflog(name):
        target = (e.target or "(deleted)")[:12]
        forced = " FORCED" if e.extra.get("forced") else ""
        click.echo(f"{e.seq:>5} {target:<12} {e.action:<12} {e.author:<10} {e.message}{forced}")


@versions.command()
@click.argument("name")
@click.argument("start")
@_message
@_author
@_store
@_errors
def branch(name, start, message, author, store) -> None:
    """Create branch NAME at START (a branch, tag or commit)."""
    e = _registry(store).branch(name, start, message=message, author=author)
    click.echo(f"branch {name} at {e.target[:12]}")  # type: ignore[index]


@versions.command()
@click.argument("name")
@click.argument("rev")
@_message
@_author
@_store
@_errors
def tag(name, rev, message, author, store) -> None:
    """Tag REV as NAME (tags never move)."""
    e = _registry(store).tag(name, rev, message=message, author=author)
    click.echo(f"tag {name} at {e.target[:12]}")  # type: ignore[index]


@versions.command()
@click.argument("candidate")
@click.argument("target", default="prod")
@click.option(
    "--metric", default=None, help="Gate metric (default: cluster-app.versions.gate.metric)."
)
@click.option("--threshold", type=float, default=None)
@click.option("--min-absolute-change", type=float, default=None)
@click.option("--min-relative-change", type=float, default=None)
@click.option("--force", is_flag=True, help="Promote even if the gate refuses (recorded).")
@_message
@_author
@_store
@_errors
def promote(
    candidate,
    target,
    metric,
    threshold,
    min_absolute_change,
    min_relative_change,
    force,
    message,
    author,
    store,
) -> None:
    """Point TARGET (default prod) at CANDIDATE if the eval gate passes it."""
    from cluster_app.versions.gate import Gate

    gate = Gate.from_config(
        **{
            k: v
            for k, v in {
                "metric": metric,
                "threshold": threshold,
                "min_absolute_change": min_absolute_change,
                "min_relative_change": min_relative_change,
            }.items()
            if v is not None
        }
    )
    moved = _registry(store).promote(
        candidate, target, gate=gate, force=force, message=message, author=author
    )
    if moved.entry is None:
        click.echo(f"{target} is at {candidate} already")
        return
    v = moved.verdict
    state = "passed" if v and v.passed else "FORCED past " + "; ".join(v.reasons if v else ())
    click.echo(f"{target} -> {moved.entry.target[:12]} (gate {state})")  # type: ignore[index]


@versions.command()
@click.argument("branch", default="prod")
@click.option("--to", default=None, help="The commit to return to (default: the previous one).")
@_message
@_author
@_store
@_errors
def rollback(branch, to, message, author, store) -> None:
    """Point BRANCH (default prod) back at a commit it held before."""
    moved = _registry(store).rollback(branch, to, message=message, author=author)
    click.echo(f"{branch} -> {moved.entry.target[:12]}")  # type: ignore[index, union-attr]


@versions.command()
@click.argument("source")
@click.argument("into")
@click.option("--method", type=click.Choice(["soup", "ties"]), default=None)
@click.option("--ff-only", is_flag=True, help="Only a fast-forward (no weight merge, no eval).")
@_message
@_author
@_store
@_errors
def merge(source, into, method, ff_only, message, author, store) -> None:
    """Merge SOURCE into branch INTO; kept only if its eval is no worse."""
    reg = _registry(store)
    if ff_only:
        moved = reg.fast_forward(source, into, message=message, author=author)
    else:
        moved = reg.merge(source, into, method=method, message=message, author=author)
    if moved.entry is None:
        click.echo(f"{into} has {source} already")
        return
    click.echo(f"{into} -> {moved.entry.target[:12]} ({moved.entry.action})")  # type: ignore[index]


@versions.command()
@click.option("--dry-run", is_flag=True, help="List what would be deleted, delete nothing.")
@click.option("--retention-days", type=click.FloatRange(min=0), default=None)
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=None)
@_json
@_store
@_errors
def gc(dry_run, retention_days, grace_seconds, as_json, store) -> None:
    """Delete parameter data that no ref, recent reflog entry or live run needs."""
    report = _registry(store).gc(
        dry_run=dry_run, retention_days=retention_days, grace_seconds=grace_seconds
    )
    if as_json:
        _echo_json({**report.summary(), "params": report.deleted_params})
        return
    verb = "would delete" if dry_run else "deleted"
    for d in report.deleted_params:
        click.echo(f"{verb} parameters {d[:12]}")
    s = report.summary()
    click.echo(
        f"{verb} {s['deleted_params']} parameter sets ({s['deleted_bytes']:,} bytes), "
        f"{s['deleted_commits']} unreachable commits, {s['deleted_objects']} orphaned objects; "
        f"kept {s['kept_params']} ({s['kept_bytes']:,} bytes)"
    )
