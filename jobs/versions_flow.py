"""A model's life in the registry: train on dev, promote through the gate, train a feature
branch from prod, merge it back when it wins, roll prod back.

python jobs/versions_flow.py --workers 2 --store versions-demo-store [--model mlp]

Prints each step and writes ``<store>/versions_flow.json`` (the refs, prod's reflog, the diff
of the feature against the prod it started from). Exits 1 if a step does not do what the flow
expects of it.
"""

from __future__ import annotations

import argparse
import json
import os

from cluster_app import AgentCluster, GateRefused, MergeConflict


def main(workers: int, store: str, model: str, rounds: int, local_steps: int) -> dict:
    out: dict = {}
    with AgentCluster(n_workers=workers, store_url=store) as ac:
        v = ac.versions
        # 1. train on dev: the run's untrained start and its result are two dev commits
        run = ac.train(model=model, rounds=rounds, local_steps=local_steps, progress=False)
        start = v.commit_run(run.run_id, 0, branch="dev", message="initial parameters")
        trained = v.commit_run(run.run_id, branch="dev", message=f"{rounds} rounds on dev")
        print(f"dev: {start.short} {start.metrics}\n     {trained.short} {trained.metrics}")
        # 2. promote to prod through the gate; a worse candidate is refused
        v.promote("dev~1", "prod", message="first production model")
        moved = v.promote("dev", "prod", message="trained model")
        print(f"promoted dev -> prod: {moved.verdict}")
        try:
            v.promote(start.id, "prod")
            raise SystemExit("the gate let a worse model into prod")
        except GateRefused as e:
            print(f"refused as it should be: {e}")
        # 3. a feature branch from prod, trained further from prod's parameters
        v.branch("feature/longer", "prod")
        more = ac.train(
            model=model,
            rounds=rounds,
            local_steps=local_steps,
            init_from="feature/longer",
            progress=False,
        )
        feature = v.commit_run(more.run_id, branch="feature/longer", message="more rounds")
        print(f"feature/longer: {feature.short} {feature.metrics}")
        out["diff_feature_vs_prod"] = v.diff("prod", "feature/longer")
        # 4. merge it back into prod when it wins
        try:
            merged = v.merge("feature/longer", "prod", message="feature/longer wins")
            print(f"merged into prod: {merged.verdict}")
            out["merged"] = True
        except MergeConflict as e:
            print(f"not merged: {e}")
            out["merged"] = False
        # 5. roll prod back to the commit it held before
        before = v.resolve("prod")
        back = v.rollback("prod", message="roll back")
        assert back.entry is not None
        print(f"rolled prod back: {before[:12]} -> {back.entry.target[:12]}")  # type: ignore[index]
        out["branches"] = v.branches()
        out["prod_reflog"] = [
            {"action": e.action, "target": e.target, "message": e.message} for e in v.reflog("prod")
        ]
        out["log_dev"] = [{"id": c.id, "message": c.message, **c.metrics} for c in v.log("dev")]
    with open(os.path.join(store, "versions_flow.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", default="versions-demo-store")
    parser.add_argument("--model", default="codelm", choices=("codelm", "mlp"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=40)
    a = parser.parse_args()
    main(a.workers, a.store, a.model, a.rounds, a.local_steps)
