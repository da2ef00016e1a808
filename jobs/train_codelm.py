"""Train the code-completion agents on a local cluster (the main job; same as `cluster-app demo`).

python jobs/train_codelm.py --workers 4 --seconds 60
"""

from __future__ import annotations

import argparse

from cluster_app.demo import run_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default="demo-output")
    args = parser.parse_args()
    run_demo(n_workers=args.workers, seconds=args.seconds, out=args.out)
