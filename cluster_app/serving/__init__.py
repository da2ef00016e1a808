"""Serving (system S10; ``docs/serving.md``): an OpenAI-compatible completion API on the fleet.

Map::

    spec.py      ServeSpec: batching, bounds, canary settings (the batch window from the budget)
    router.py    Split and Arm: weighted, sticky-per-user A/B with a shadow (pure)
    batcher.py   Batcher: dynamic batching with a bounded delay and a bounded queue (asyncio)
    metrics.py   per-arm stats for the canary, Prometheus series for /metrics
    canary.py    judge: error rate, p99 and the eval spec's gate on logged prompts (pure)
    openai.py    the OpenAI request (validated, errors naming the field) and response shape
    gateway.py   Gateway: the Starlette app, routing, dispatch as agent tasks, the canary loop
    server.py    ServingHandle: the gateway under uvicorn in a thread, with a small client
"""

from cluster_app.serving.router import Arm, Split
from cluster_app.serving.spec import ServeSpec

__all__ = ["Arm", "ServeSpec", "Split"]
