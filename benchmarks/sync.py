"""Parameter-sync cost: bytes per sync and push/pull latency per codec, vs fp32 full sync.

1. **Real deltas** (the bytes headline, ``bytes_reduction_vs_fp32_full_real``): the code model
   (the product's own: a character transformer, configured sizes) trains on the standard
   library's sources for a few rounds of ``H`` local steps; each round's delta (parameters after
   the round minus before, every element dense) is encoded with each codec, error feedback
   carried from round to round as an agent does, and stored; its stored bytes are compared with
   a full fp32 snapshot of the same model.
2. **Synthetic deltas** (latency, throughput, memory; and ``bytes_reduction_vs_fp32_full``, the
   first bytes figure, kept under its own name): for 1M and 10M parameters (a transformer-like
   set of leaves), a dense synthetic delta drawn from a Student-t(4) per leaf. It is *not* a
   worst case: with absmax-per-block scaling heavy tails compress better than real deltas do
   (about 2.2 bits per parameter in int4 against about 2.9 for real ones). Each codec pushes it
   through the ParamStore and pulls it back, timing both, against (a) syncing the full fp32
   parameters and (b) a raw ``np.save`` of the same parameter bytes to the same disk.

    python benchmarks/sync.py [--quick] [--out PATH]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import parse_args, percentile, print_table, write_result

from cluster_app.sync.codecs import CODECS
from cluster_app.sync.store import ParamStore

CODEC_NAMES = ["fp16", "int8", "int4", "int3", "int2"]
# the headline codec: the finest sub-byte codec, whose training loss matches fp32 deltas in
# benchmarks/hybrid.py; coarser codecs (int3, int2) are reported but never headlined here,
# since bytes alone say nothing of what they cost in convergence
HEADLINE_CODEC = "int4"


def make_params(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Leaves shaped like a transformer's: embeddings, square and 4x MLP matrices, biases."""
    rng = np.random.default_rng(seed)
    d = 128 if n <= 200_000 else 512 if n <= 2_000_000 else 1024
    vocab = int(np.clip(n // (8 * d), 64, 4096))
    out, total, i = {"embed": rng.normal(0, 0.02, (vocab, d))}, vocab * d, 0
    while total < n:
        for name, shape in (
            (f"blocks/{i}/qkv", (d, 3 * d)),
            (f"blocks/{i}/up", (d, 4 * d)),
            (f"blocks/{i}/down", (4 * d, d)),
            (f"blocks/{i}/bias", (4 * d,)),
        ):
            size = int(np.prod(shape))
            if total + size > n:
                shape = (max(1, (n - total) // d), d)
                size = int(np.prod(shape))
            out[name] = rng.normal(0, 0.02, shape)
            total += size
            if total >= n:
                break
        i += 1
    return {k: v.astype(np.float32) for k, v in out.items()}


def training_like_delta(params: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Dense, heavy-tailed, per-leaf-scaled changes, like 100 Adam steps' worth."""
    rng = np.random.default_rng(seed)
    return {
        k: (rng.standard_t(4, v.shape) * 1e-3 * rng.uniform(0.5, 2)).astype(np.float32)
        for k, v in params.items()
    }


def bench_size(n: int, repeats: int, tmp: str) -> dict:
    params = make_params(n)
    nbytes_params = sum(v.nbytes for v in params.values())
    n = sum(v.size for v in params.values())
    out: dict = {"n_params": n, "param_bytes": nbytes_params, "codecs": {}}

    # raw write: np.save of the same bytes to the same disk (the physical limit)
    raw = []
    for r in range(repeats):
        d = os.path.join(tmp, f"raw-{n}-{r}")
        os.makedirs(d)
        t0 = time.perf_counter()
        for k, v in params.items():
            with open(os.path.join(d, k.replace("/", "_") + ".npy"), "wb") as f:
                np.save(f, v)
                f.flush()
        raw.append(time.perf_counter() - t0)
    out["raw_write_s"] = raw

    # fp32 full sync: push = commit the full parameters; pull = read them back
    store = ParamStore(os.path.join(tmp, f"store-{n}"))
    push, pull, sizes = [], [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        rec = store.commit_full(params, version=r)
        push.append(time.perf_counter() - t0)
        store._cache = None  # measure a real read, not the reader's cache
        t0 = time.perf_counter()
        store.read(r)
        pull.append(time.perf_counter() - t0)
        sizes.append(rec.nbytes)
    out["codecs"]["fp32-full"] = {"push_s": push, "pull_s": pull, "bytes": sizes}

    for name in CODEC_NAMES:
        codec = CODECS[name]
        residual: dict = {}
        push, pull, sizes, extra = [], [], [], []
        for r in range(repeats + 1):
            delta = training_like_delta(params, seed=r)
            # the last repeat measures memory only: tracemalloc slows allocation, so it never
            # runs while latency is being timed
            traced = r == repeats
            if traced:
                tracemalloc.start()
                base_mem = tracemalloc.get_traced_memory()[0]
            t0 = time.perf_counter()
            enc = {}
            for k, v in delta.items():
                enc[k], residual[k] = codec.encode(v, residual.get(k))
            name_ = store.put_object(enc, codec=name)
            if traced:
                extra.append(tracemalloc.get_traced_memory()[1] - base_mem)
                tracemalloc.stop()
                store.delete_object(name_)
                continue
            push.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.get_object(name_)
            pull.append(time.perf_counter() - t0)
            sizes.append(store.object_nbytes(name_))
            store.delete_object(name_)
        out["codecs"][name] = {
            "push_s": push,
            "pull_s": pull,
            "bytes": sizes,
            "push_extra_mem_bytes": extra,
        }
    shutil.rmtree(os.path.join(tmp, f"store-{n}"), ignore_errors=True)
    return out


def real_deltas(rounds: int, local_steps: int) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """The code model's parameters and its dense deltas over ``rounds`` rounds of training."""
    from cluster_app.agent.agent import Agent
    from cluster_app.agent.spec import AgentSpec

    agent = Agent(AgentSpec.from_config(model="codelm"))
    params = agent.init_params()
    agent.load(params, version=0)
    deltas = []
    for r in range(rounds):
        delta, _ = agent.train(r, 0, 1, local_steps)
        deltas.append(delta)
        params = {k: params[k] + delta[k] for k in params}
        agent.load(params, version=r + 1)
    return params, deltas


def bench_real(rounds: int, local_steps: int, tmp: str) -> dict:
    params, deltas = real_deltas(rounds, local_steps)
    store = ParamStore(os.path.join(tmp, "store-real"))
    full = store.commit_full(params, version=0).nbytes
    n = sum(v.size for v in params.values())
    out: dict = {"n_params": n, "rounds": rounds, "local_steps": local_steps}
    out["codecs"] = {"fp32-full": {"bytes": [full]}}
    for name in CODEC_NAMES:
        codec, residual, sizes = CODECS[name], {}, []
        for delta in deltas:
            enc = {}
            for k, v in delta.items():
                enc[k], residual[k] = codec.encode(v, residual.get(k))
            obj = store.put_object(enc, codec=name)
            sizes.append(store.object_nbytes(obj))
            store.delete_object(obj)
        out["codecs"][name] = {"bytes": sizes, "bits_per_param": [8 * b / n for b in sizes]}
    return out


def main() -> None:
    args = parse_args("sync", __doc__.splitlines()[0])
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    repeats = 3 if args.quick else 10
    real_rounds, real_steps = (2, 20) if args.quick else (6, 100)
    tmp = tempfile.mkdtemp(prefix="bench-sync-", dir=os.environ.get("BENCH_TMP"))
    try:
        real = bench_real(real_rounds, real_steps, tmp)
        results = {str(n): bench_size(n, repeats, tmp) for n in sizes}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    small, large = results[str(sizes[0])], results[str(sizes[-1])]
    codec = HEADLINE_CODEC
    full_bytes = np.median(large["codecs"]["fp32-full"]["bytes"])
    one_m = results.get("1000000", small)
    pp = [a + b for a, b in zip(one_m["codecs"][codec]["push_s"], one_m["codecs"][codec]["pull_s"])]
    fp32 = large["codecs"]["fp32-full"]
    real_full = real["codecs"]["fp32-full"]["bytes"][0]
    headline = {
        # on the code model's real deltas (every round's; the median)
        "bytes_reduction_vs_fp32_full_real": real_full / np.median(real["codecs"][codec]["bytes"]),
        "bits_per_param_real": float(np.median(real["codecs"][codec]["bits_per_param"])),
        # the first definition: on the synthetic Student-t delta at the largest size
        "bytes_reduction_vs_fp32_full": full_bytes / np.median(large["codecs"][codec]["bytes"]),
        "codec": codec,
        "push_pull_p50_ms_1m": 1000 * percentile(pp, 50),
        "throughput_ratio_vs_raw_write": np.median(large["raw_write_s"])
        / np.median(fp32["push_s"]),
        "push_peak_extra_memory_ratio_10m": max(large["codecs"][codec]["push_extra_mem_bytes"])
        / large["param_bytes"],
    }
    png = write_result(
        args.out,
        "sync",
        args.quick,
        {
            "sizes": sizes,
            "repeats": repeats,
            "codecs": CODEC_NAMES,
            "real_rounds": real_rounds,
            "real_local_steps": real_steps,
        },
        {**results, "real": real},
        headline,
    )
    plot(results, real, png)
    print_table(
        f"real deltas: the code model ({real['n_params']:,} params), {real_rounds} rounds x "
        f"{real_steps} local steps (medians over rounds)",
        ["codec", "bytes", "x fewer than fp32 full", "bits / param"],
        [
            [
                c,
                int(np.median(m["bytes"])),
                real_full / np.median(m["bytes"]),
                float(np.median(m["bits_per_param"])) if "bits_per_param" in m else 32.0,
            ]
            for c, m in real["codecs"].items()
        ],
    )
    rows = []
    for n, res in results.items():
        for c, m in res["codecs"].items():
            rows.append(
                [
                    f"{int(n):,}",
                    c,
                    int(np.median(m["bytes"])),
                    full_bytes_ratio(res, c),
                    1000 * percentile(m["push_s"], 50),
                    1000 * percentile(m["push_s"], 99),
                    1000 * percentile(m["pull_s"], 50),
                    1000 * percentile(m["pull_s"], 99),
                ]
            )
    print_table(
        "parameter sync, synthetic deltas (medians; p99 over repeats)",
        [
            "params",
            "codec",
            "bytes",
            "x fewer",
            "push p50 ms",
            "push p99 ms",
            "pull p50 ms",
            "pull p99 ms",
        ],
        rows,
    )
    print_table("headline", ["key", "value"], [[k, v] for k, v in headline.items()])


def full_bytes_ratio(res: dict, codec: str) -> float:
    return float(
        np.median(res["codecs"]["fp32-full"]["bytes"]) / np.median(res["codecs"][codec]["bytes"])
    )


def plot(results: dict, real: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    names = ["fp32-full", *CODEC_NAMES]
    full = real["codecs"]["fp32-full"]["bytes"][0]
    ratios = [[full / b for b in real["codecs"][c]["bytes"]] for c in CODEC_NAMES]
    axes[2].boxplot(ratios)
    axes[2].set_xticks(range(1, len(CODEC_NAMES) + 1), CODEC_NAMES)
    axes[2].axhline(8, ls="--", color="gray", label="target 8x")
    axes[2].set_title("real deltas of the code model: x fewer bytes than fp32 full")
    axes[2].legend()
    axes = axes[:2]
    width = 0.8 / len(results)
    for i, (n, res) in enumerate(results.items()):
        x = np.arange(len(names)) + i * width
        axes[0].bar(
            x,
            [np.median(res["codecs"][c]["bytes"]) / 1e6 for c in names],
            width,
            label=f"{int(n):,} params",
        )
        axes[1].bar(
            x,
            [
                1000 * np.median(np.add(res["codecs"][c]["push_s"], res["codecs"][c]["pull_s"]))
                for c in names
            ],
            width,
            label=f"{int(n):,} params",
        )
    for ax, title in zip(
        axes, ["synthetic: MB per sync (stored, exact)", "synthetic: push + pull, median ms"]
    ):
        ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2, names)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("ParamStore sync: fp32 full sync vs compressed deltas with error feedback")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
