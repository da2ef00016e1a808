"""Registry cost against history length: commit, ref update, log and checkout at 10, 1,000 and
10,000 commits, and garbage collection over 1,000 unreferenced versions. Local disk.

- **History**: branch ``dev`` grows to each size by real commits (each one a commit record, a
  ref-log entry and a hint, as any commit writes). The fill commits name the same parameters,
  so the fill writes metadata only; the *measured* commits each store new parameters (the code
  model's real shapes, 249k float32) and so pay the full cost.
- At each size, medians over repeats of:
  - ``commit``: new parameters committed on ``dev`` (store, evaluate skipped, record, CAS);
  - ``ref_update``: a compare-and-swap move of ``dev`` (its log has that many entries);
  - ``head``: finding ``dev``'s head (O(1): the hint, then a probe);
  - ``head_by_listing`` (the **baseline**, in the same run): the same head found by listing the
    ref's log, as ``ParamStore.latest()`` finds a run's newest version by listing its commits;
  - ``log``: the whole history of ``dev``, per commit;
  - ``checkout``: ``dev``'s parameters read back and verified against their digest.
- **GC**: 1,000 versions with distinct parameters (the digits MLP's real shapes) committed on a
  branch that is then deleted, beside 10 tagged ones; ``gc(retention_days=0, grace_seconds=0)``.
  ``gc_bytes_freed_fraction``: bytes freed on disk over the on-disk bytes of the unreferenced
  versions' parameters (objects, seals, pointers), measured before.

Targets (``docs/versions.md``): ``ref_update_ms_10k`` <= 50 ms and
``ref_update_growth_10k_vs_10`` <= 1.5; ``gc_bytes_freed_fraction`` >= 0.9.

    python benchmarks/registry.py [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, print_table, timed_ms, write_result

from cluster_app.agent.agent import Agent
from cluster_app.agent.spec import AgentSpec
from cluster_app.versions import gc
from cluster_app.versions.names import BRANCH
from cluster_app.versions.registry import Registry


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def history(reg: Registry, sizes: list[int], repeats: int, params: dict) -> dict:
    """Grow ``dev`` through ``sizes`` commits; measure each operation at each size."""
    rng = np.random.default_rng(0)
    fill = {k: v.copy() for k, v in params.items()}
    out: dict[str, dict] = {}
    n = 0
    for size in sizes:
        t0 = time.perf_counter()
        while n < size:
            reg.commit(fill, branch="dev", message=f"fill {n}", evaluate=False)
            n += 1
        fill_s = time.perf_counter() - t0

        def commit():
            fresh = {
                k: v + rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in params.items()
            }
            reg.commit(fresh, branch="dev", message="measured", evaluate=False)

        commit_ms = timed_ms(commit, repeats)
        n += repeats
        ids = (reg.resolve("dev"), reg.resolve("dev~1"))

        def ref_update(ids=ids):
            head = reg.refs.target(BRANCH, "dev")
            reg.refs.update(
                BRANCH, "dev", ids[0] if head != ids[0] else ids[1], head, action="bench"
            )

        update_ms = timed_ms(ref_update, repeats)
        head_ms = timed_ms(lambda: reg.refs.head(BRANCH, "dev"), repeats)

        def by_listing():
            seqs = reg.refs._listed_seqs(BRANCH, "dev")
            reg.refs._entry(BRANCH, "dev", seqs[-1])

        listing_ms = timed_ms(by_listing, max(3, repeats // 5))
        log_reps = 3 if size >= 1000 else repeats
        log_ms = timed_ms(lambda: reg.log("dev"), log_reps)
        n_log = len(reg.log("dev"))
        checkout_ms = timed_ms(lambda: reg.params("dev"), repeats)
        out[str(size)] = {
            "commits": n,
            "fill_s": fill_s,
            "commit_ms": commit_ms,
            "ref_update_ms": update_ms,
            "head_ms": head_ms,
            "head_by_listing_ms": listing_ms,
            "log_ms": log_ms,
            "log_commits": n_log,
            "checkout_ms": checkout_ms,
        }
        print(
            f"{size:>6} commits: commit {np.median(commit_ms):.1f} ms, ref update "
            f"{np.median(update_ms):.2f} ms, head {np.median(head_ms):.2f} ms (listing "
            f"{np.median(listing_ms):.2f} ms), log {np.median(log_ms) / n_log:.3f} ms/commit, "
            f"checkout {np.median(checkout_ms):.1f} ms",
            flush=True,
        )
    return out


def garbage(reg: Registry, n_garbage: int, params: dict) -> dict:
    """``n_garbage`` versions on a deleted branch beside 10 kept; collect; bytes freed."""
    for i in range(10):  # ten referenced versions: each tagged
        c = reg.commit({k: v + i for k, v in params.items()}, branch="keep", evaluate=False)
        reg.tag(f"release-{i}", c.id)
    reg.branch("experiments", "keep")
    t0 = time.perf_counter()
    digests = []
    for i in range(n_garbage):
        c = reg.commit(
            {k: v + 100 + i * 1e-2 for k, v in params.items()}, branch="experiments", evaluate=False
        )
        digests.append(c.params)
    write_s = time.perf_counter() - t0
    reg.delete_branch("experiments")
    garbage_bytes = 0
    for d in digests:
        ptr = reg.objects.pointer(d)
        garbage_bytes += _du(f"{reg.root}/objects/{ptr['object']}")
        garbage_bytes += os.path.getsize(f"{reg.root}/seals/{ptr['object']}.json")
        garbage_bytes += os.path.getsize(f"{reg.root}/params/{d}.json")
    before = _du(reg.root)
    dry_t0 = time.perf_counter()
    dry = gc.collect(reg, dry_run=True, retention_days=0, grace_seconds=0)
    dry_s = time.perf_counter() - dry_t0
    t0 = time.perf_counter()
    report = gc.collect(reg, retention_days=0, grace_seconds=0)
    gc_s = time.perf_counter() - t0
    after = _du(reg.root)
    for i in range(10):  # everything referenced still checks out
        reg.params(f"release-{i}")
    return {
        "versions_unreferenced": n_garbage,
        "write_s": write_s,
        "bytes_before": before,
        "bytes_after": after,
        "garbage_bytes": garbage_bytes,
        "freed_fraction": (before - after) / garbage_bytes,
        "dry_run_s": dry_s,
        "dry_run_listed": len(dry.deleted_params),
        "gc_s": gc_s,
        "deleted_params": len(report.deleted_params),
        "deleted_bytes_reported": report.deleted_bytes,
        "kept_params": report.kept_params,
    }


def plot(hist: dict, gcr: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in hist]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    for key, label in (
        ("ref_update_ms", "ref update (CAS)"),
        ("head_ms", "head (hint)"),
        ("head_by_listing_ms", "head by listing (baseline)"),
        ("commit_ms", "commit (new parameters)"),
        ("checkout_ms", "checkout (read + verify)"),
    ):
        med = [np.median(hist[str(s)][key]) for s in sizes]
        lo = [np.percentile(hist[str(s)][key], 25) for s in sizes]
        hi = [np.percentile(hist[str(s)][key], 75) for s in sizes]
        ax.errorbar(
            sizes,
            med,
            yerr=[np.subtract(med, lo), np.subtract(hi, med)],
            marker="o",
            label=label,
            capsize=3,
        )
    ax.set(xscale="log", yscale="log", xlabel="commits on the branch", ylabel="ms (median, IQR)")
    ax.set_title("one-ref operations vs history length")
    ax.legend(fontsize=8)
    ax = axes[1]
    per = [np.median(hist[str(s)]["log_ms"]) / hist[str(s)]["log_commits"] for s in sizes]
    ax.plot(sizes, per, marker="o")
    ax.set(
        xscale="log",
        xlabel="commits on the branch",
        ylabel="ms per commit",
        title="log (whole history)",
    )
    ax.set_ylim(0, max(per) * 1.3)
    ax = axes[2]
    mb = 1 / 2**20
    ax.bar(
        ["before", "after", "unreferenced"],
        [gcr["bytes_before"] * mb, gcr["bytes_after"] * mb, gcr["garbage_bytes"] * mb],
        color=["C0", "C2", "C3"],
    )
    ax.set(
        ylabel="MiB on disk",
        title=f"GC of {gcr['versions_unreferenced']} unreferenced versions: "
        f"{gcr['freed_fraction']:.0%} freed in {gcr['gc_s']:.1f}s",
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args("registry", __doc__.splitlines()[0])
    sizes = [10, 100] if args.quick else [10, 1000, 10000]
    repeats = 10 if args.quick else 40
    n_garbage = 50 if args.quick else 1000
    code = Agent(AgentSpec.from_config(model="codelm")).init_params()
    digits = Agent(AgentSpec.from_config(model="mlp")).init_params()
    tmp = tempfile.mkdtemp(prefix="bench-registry-", dir=os.environ.get("BENCH_TMP"))
    try:
        hist = history(Registry(os.path.join(tmp, "history")), sizes, repeats, code)
        gcr = garbage(Registry(os.path.join(tmp, "gc")), n_garbage, digits)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    big, small = hist[str(sizes[-1])], hist[str(sizes[0])]
    tag = "10k" if sizes[-1] == 10000 else str(sizes[-1])
    med = lambda xs: float(np.median(xs))  # noqa: E731
    headline = {
        f"ref_update_ms_{tag}": med(big["ref_update_ms"]),
        f"ref_update_growth_{tag}_vs_10": med(big["ref_update_ms"]) / med(small["ref_update_ms"]),
        f"head_ms_{tag}": med(big["head_ms"]),
        f"head_by_listing_ms_{tag}": med(big["head_by_listing_ms"]),
        f"head_by_listing_growth_{tag}_vs_10": med(big["head_by_listing_ms"])
        / med(small["head_by_listing_ms"]),
        f"commit_ms_{tag}": med(big["commit_ms"]),
        f"commit_growth_{tag}_vs_10": med(big["commit_ms"]) / med(small["commit_ms"]),
        f"log_ms_per_commit_{tag}": med(big["log_ms"]) / big["log_commits"],
        f"checkout_ms_{tag}": med(big["checkout_ms"]),
        f"checkout_growth_{tag}_vs_10": med(big["checkout_ms"]) / med(small["checkout_ms"]),
        "gc_bytes_freed_fraction": gcr["freed_fraction"],
        f"gc_seconds_{n_garbage}": gcr["gc_s"],
    }
    params = {
        "sizes": sizes,
        "repeats": repeats,
        "n_garbage": n_garbage,
        "checkout_params": sum(v.size for v in code.values()),
        "gc_params_per_version": sum(v.size for v in digits.values()),
    }
    png = write_result(
        args.out, "registry", args.quick, params, {"history": hist, "gc": gcr}, headline
    )
    plot(hist, gcr, png)
    rows = [[k, v] for k, v in headline.items()]
    print_table("registry headline", ["key", "value"], rows)


if __name__ == "__main__":
    main()
