"""The completion gateway on a real local cluster, driven over HTTP by a real client (httpx).

One small code model is trained and committed to ``prod``; ``feature/good`` is prod nudged a
little, ``feature/bad`` is prod made worse on purpose (heavy noise on every weight).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time

import httpx
import pytest
from distributed.utils_test import poll_for
from scipy import stats

from cluster_app import AgentCluster, AgentSpec
from cluster_app.serving.gateway import Gateway
from cluster_app.serving.server import ServingHandle
from cluster_app.serving.spec import ServeSpec
from cluster_app.testing.candidates import commit_noisy

pytestmark = pytest.mark.slow

SPEC = AgentSpec.from_config(
    model="codelm",
    model_kwargs={"d_model": 32, "n_layers": 1},
    data_kwargs={"max_train_chars": 300_000},
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("serving") / "store")
    with AgentCluster(n_workers=2, agent=SPEC, store_url=store, quiet=True) as ac:
        run = ac.train(rounds=2, local_steps=20, progress=False)
        v = ac.versions
        prod = v.commit_run(run.run_id, branch="prod", message="trained")
        commit_noisy(v, prod, {"feature/good": 1e-4, "feature/bad": 0.5})
        handle = ac.serve("prod", port=0, check_every=0.25, min_requests=10)
        yield ac, handle, store
        handle.stop()
        ac.serving = None


def post(handle, body=None, content=None):
    return httpx.post(f"{handle.url}/v1/completions", json=body, content=content, timeout=60)


def test_completions_over_http_in_the_openai_shape(served):
    ac, handle, _ = served
    r = post(handle, {"prompt": "def __init__(self", "max_tokens": 12, "user": "alice"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"].startswith("prod@")
    choice = body["choices"][0]
    assert len(choice["text"]) == 12 and choice["finish_reason"] == "length"
    # greedy is deterministic, and the Python API reaches the same path
    again = post(handle, {"prompt": "def __init__(self", "max_tokens": 12}).json()
    assert again["choices"][0]["text"] == choice["text"]
    assert ac.complete("def __init__(self", 12) == choice["text"]
    many = post(handle, {"prompt": ["import os\n", "x = "], "max_tokens": 4}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1]
    assert httpx.get(f"{handle.url}/healthz").json()["status"] == "ok"
    metrics = httpx.get(f"{handle.url}/metrics").text
    assert 'cluster_app_serving_requests_total{outcome="ok",role="baseline"}' in metrics
    assert "prod" in [m["id"] for m in httpx.get(f"{handle.url}/v1/models").json()["data"]]


@pytest.mark.parametrize(
    "body, content, status, param",
    [
        (None, b"{not json", 400, None),
        ({"prompt": 42}, None, 400, "prompt"),
        ({"prompt": "x", "max_tokens": -1}, None, 400, "max_tokens"),
        ({"prompt": "x", "temperature": "warm"}, None, 400, "temperature"),
        ({"prompt": "x" * 100_000}, None, 400, "prompt"),
        ({"prompt": "x", "model": "no-such-ref"}, None, 404, "model"),
    ],
)
def test_bad_input_gets_a_4xx_with_an_openai_error_body(served, body, content, status, param):
    _, handle, _ = served
    r = post(handle, body, content)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_a_request_may_name_a_ref(served):
    _, handle, _ = served
    r = post(handle, {"prompt": "import ", "model": "feature/good", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["model"].startswith("feature/good@")


def test_load_beyond_capacity_is_refused_quickly_with_retry_after(served):
    ac, _, store = served
    spec = ServeSpec.from_config(max_queue=2, max_batch=1, max_in_flight=1)
    gateway = Gateway(ac.scheduler_address, store, "prod", spec)
    with ServingHandle(gateway, port=0) as small:
        with cf.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: post(small, {"prompt": "x"}), range(32)))
        refused = [r for r in results if r.status_code == 429]
        assert refused and all(r.headers["Retry-After"].isdigit() for r in refused)
        assert {r.status_code for r in results} <= {200, 429}
        assert refused[0].json()["error"]["type"] == "server_overloaded"


def test_ab_weights_are_honoured_and_users_are_sticky(served):
    _, handle, _ = served
    split = handle.set_split({"prod": 0.7, "feature/good": 0.3})
    users = [f"user-{i}" for i in range(200)]

    def arm(user):
        r = post(handle, {"prompt": "for i in ", "max_tokens": 4, "user": user})
        assert r.status_code == 200
        return r.json()["model"].split("@")[0]

    with cf.ThreadPoolExecutor(16) as pool:
        first = list(pool.map(arm, users))
        second = list(pool.map(arm, users[:50]))
    assert second == first[:50]  # sticky
    n_good = first.count("feature/good")
    assert stats.binomtest(n_good, len(users), 0.3).pvalue > 1e-3, n_good
    assert handle.split()["id"] == split["id"] and handle.split()["state"] == "active"


def test_shadow_answers_are_never_returned(served):
    _, handle, _ = served
    handle.set_split({"prod": 1.0}, shadow="feature/good")
    with cf.ThreadPoolExecutor(8) as pool:
        models = list(
            pool.map(
                lambda i: post(handle, {"prompt": "while ", "user": f"s{i}"}).json()["model"],
                range(40),
            )
        )
    assert all(m.startswith("prod@") for m in models)
    poll_for(lambda: (handle.split()["stats"]["feature/good"]["requests"] or 0) >= 40, timeout=60)


def test_a_made_worse_candidate_is_rolled_back_and_the_split_survives_a_restart(served):
    ac, handle, store = served

    def rollbacks() -> float:
        text = httpx.get(f"{handle.url}/metrics").text
        return next(
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("cluster_app_serving_rollbacks_total ")
        )

    before = rollbacks()
    split = handle.set_split({"prod": 0.5, "feature/bad": 0.5})
    started = time.monotonic()
    i = 0
    while handle.split()["state"] == "active":
        assert time.monotonic() - started < 60, handle.split()
        with cf.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda k, i=i: post(handle, {"prompt": "def f(x):\n    ", "user": f"b{i}-{k}"}),
                    range(16),
                )
            )
        i += 1
    now = handle.split()
    assert now["id"] == split["id"] and now["state"] == "rolled_back"
    assert "feature/bad" in now["reason"] and "quality" in now["reason"]
    assert any(e["kind"] == "rollback" for e in now["events"])
    assert rollbacks() == before + 1
    models = {
        post(handle, {"prompt": "x", "user": f"after-{k}"}).json()["model"] for k in range(20)
    }
    assert all(m.startswith("prod@") for m in models)  # every request on the baseline
    # the split is on disk: a restarted gateway keeps it
    with open(os.path.join(store, "serving", "cluster-app", "split.json")) as f:
        on_disk = json.load(f)
    assert on_disk["state"] == "rolled_back"
    gateway = Gateway(ac.scheduler_address, store, "prod", ServeSpec.from_config())
    with ServingHandle(gateway, port=0) as restarted:
        assert restarted.split()["state"] == "rolled_back"
        # and a second canary starts clean
        fresh = restarted.set_split({"prod": 0.9, "feature/good": 0.1})
        assert fresh["id"] != split["id"] and fresh["state"] == "active"
        assert restarted.split()["stats"]["feature/good"]["requests"] == 0


def test_the_scheduler_sees_the_split_and_the_branch_moves(served):
    from cluster_app.observe.monitor import monitor_snapshot

    ac, handle, _ = served
    handle.set_split({"prod": 0.8, "feature/good": 0.2})
    for k in range(10):
        post(handle, {"prompt": "x = ", "user": f"seen-{k}", "max_tokens": 4})
    split_id = handle.split()["id"]

    def reported():
        snap = monitor_snapshot(ac.client)
        mine = [s for s in snap["serving"] if s.get("split") == split_id]
        return mine and sum(a.get("requests") or 0 for a in mine[0]["arms"]) >= 10 and snap

    poll_for(lambda: bool(reported()), timeout=30)
    snap = reported()
    assert snap
    arms = {a["ref"] for a in snap["serving"][0]["arms"]}
    assert arms == {"prod", "feature/good"}
    # the branches the fixture committed were reported as they moved
    assert {"prod", "feature/good", "feature/bad"} <= {r["name"] for r in snap["refs"]}
