"""Serve ``prod`` over HTTP, run an A/B test against a ``feature/`` branch, and watch the
canary roll it back by itself when the candidate is made worse on purpose.

python jobs/serve_ab.py --workers 4 --store serve-demo-store

1. trains the code model briefly and commits it to ``prod``;
2. trains ``feature/more`` from ``prod`` a little further and serves an A/B split
   (prod 0.8 / feature/more 0.2), sticky per user, with completions printed from both arms;
3. commits ``feature/worse`` (prod's weights with heavy noise: made worse on purpose), starts a
   second split (prod 0.5 / feature/worse 0.5) and keeps traffic flowing until the canary rolls
   it back, then prints why and how long it took.

Writes ``<store>/serve_ab.json``. Exits 1 if the bad candidate is not rolled back in 60 s.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import time

import httpx
import numpy as np

from cluster_app import AgentCluster

PROMPTS = ["import os\nimport ", "    def __init__(self", "for i in range(", "        return self."]


def main(workers: int, store: str, rounds: int, local_steps: int) -> dict:
    out: dict = {}
    with AgentCluster(n_workers=workers, store_url=store) as ac:
        v = ac.versions
        run = ac.train(rounds=rounds, local_steps=local_steps, progress=False)
        prod = v.commit_run(run.run_id, branch="prod", message="served model")
        v.branch("feature/more", "prod")
        more = ac.train(rounds=rounds, local_steps=local_steps, init_from="prod", progress=False)
        v.commit_run(more.run_id, branch="feature/more", message="more rounds")
        serving = ac.serve("prod", port=0)
        print(f"serving prod ({prod.short}) at {serving.url}")
        split = serving.set_split({"prod": 0.8, "feature/more": 0.2})
        answers = []
        for i, prompt in enumerate(PROMPTS * 5):
            r = httpx.post(
                f"{serving.url}/v1/completions",
                json={"prompt": prompt, "max_tokens": 24, "user": f"dev-{i}"},
                timeout=60,
            ).json()
            answers.append(
                {"user": f"dev-{i}", "model": r["model"], "text": r["choices"][0]["text"]}
            )
        for a in answers[:8]:
            print(f"  {a['user']:>7} -> {a['model']:<28} {a['text']!r}")
        out["ab"] = {"split": split["id"], "answers": answers, "stats": serving.split()["stats"]}

        rng = np.random.default_rng(0)
        worse = {
            k: x + rng.normal(0, 0.5, x.shape).astype(np.float32)
            for k, x in v.params("prod").items()
        }
        v.commit(worse, branch="feature/worse", config=prod.config, message="made worse on purpose")
        bad = serving.set_split({"prod": 0.5, "feature/worse": 0.5})
        started = time.time()
        k = 0
        with cf.ThreadPoolExecutor(8) as pool:
            while serving.split()["state"] == "active" and time.time() - started < 60:
                body = [{"prompt": PROMPTS[j % 4], "user": f"user-{k}-{j}"} for j in range(16)]
                list(
                    pool.map(
                        lambda b: httpx.post(f"{serving.url}/v1/completions", json=b, timeout=60),
                        body,
                    )
                )
                k += 1
        now = serving.split()
        event = next(
            (e for e in now["events"] if e["kind"] == "rollback" and e["split"] == bad["id"]), None
        )
        out["rollback"] = {
            "state": now["state"],
            "reason": now["reason"],
            "seconds": event["time"] - started if event else None,
        }
        print(
            f"split {bad['id']}: {now['state']} after {out['rollback']['seconds']}: {now['reason']}"
        )
    with open(os.path.join(store, "serve_ab.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    if out["rollback"]["state"] != "rolled_back":
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--store", default="serve-demo-store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=40)
    a = parser.parse_args()
    main(a.workers, a.store, a.rounds, a.local_steps)
