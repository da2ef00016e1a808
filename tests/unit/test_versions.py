"""The registry's parts on a local disk: ref names, CAS refs and reflogs, content-addressed
commits, the gate, merges, rollback and GC. The evaluator here scores parameters by their
squared distance to a known optimum (a real loss, cheap to compute), so each test knows which
model is better; the model evaluator itself is tested in tests/integration/test_versions_runs.py."""

from __future__ import annotations

import itertools
import json
import os
import re

import numpy as np
import pytest

from cluster_app.errors import (
    CorruptData,
    GateRefused,
    InvalidRefName,
    MergeConflict,
    RefConflict,
    RefNotFound,
    SpecError,
    StoreError,
)
from cluster_app.testing.contention import contend
from cluster_app.versions import gc, ops
from cluster_app.versions.gate import Gate
from cluster_app.versions.merge import merge_params
from cluster_app.versions.names import check_ref_name
from cluster_app.versions.refs import ANY
from cluster_app.versions.registry import Registry

OPT = {"a": np.ones((40, 30), np.float32), "b": np.ones(30, np.float32)}
CONFIG = {"agent": {"model": "quadratic"}}


def make_registry(url) -> Registry:
    reg = Registry(url)

    def evaluate(config, params_digest, spec):
        p = reg.objects.get(params_digest)
        return {"heldout_loss": float(sum(((p[k] - OPT[k]) ** 2).mean() for k in OPT))}

    reg.evaluator = evaluate
    return reg


def params(x: float, y: float | None = None) -> dict[str, np.ndarray]:
    return {
        "a": np.full((40, 30), x, np.float32),
        "b": np.full(30, x if y is None else y, np.float32),
    }


@pytest.fixture
def reg(tmp_path):
    return make_registry(str(tmp_path / "store"))


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["dev", "prod", "feature/longer-context", "v1.2", "ab_test/x-2"])
def test_valid_ref_names(name):
    assert check_ref_name(name) == name


@pytest.mark.parametrize(
    "name, rule",
    [
        ("", "empty"),
        ("@", "'@'"),
        ("a..b", "'..'"),
        ("/dev", "'/'"),
        ("dev/", "'/'"),
        ("a//b", "'/'"),
        ("dev.", "ends with '.'"),
        ("feature/.hidden", "begins with '.'"),
        ("prod.lock", ".lock"),
        ("x@{1}", "@{"),
        ("has space", "' '"),
        ("a~1", "'~'"),
        ("a^", "'^'"),
        ("a:b", "':'"),
        ("a?", "'?'"),
        ("a*", "'*'"),
        ("a[", "'['"),
        ("a\\b", repr("\\")),
        ("tab\there", repr("\t")),
        ("deadbeef12", "commit id"),
    ],
)
def test_invalid_ref_names_say_which_rule(name, rule):
    with pytest.raises(InvalidRefName, match=re.escape(rule)):
        check_ref_name(name)


# ---------------------------------------------------------------- refs
def test_a_ref_update_expects_the_head_it_read(reg):
    c1 = reg.commit(params(0.1), branch="dev", message="one")
    c2 = reg.commit(params(0.2), branch="dev", message="two")
    assert reg.resolve("dev") == c2.id and reg.get("dev").parents == (c1.id,)
    with pytest.raises(RefConflict, match="another update moved it"):
        reg.set_branch("dev", c1.id, expected=c1.id, action="reset")  # stale: dev is at c2
    assert reg.resolve("dev") == c2.id  # unchanged
    with pytest.raises(RefConflict):  # the Hub's parent_commit: a commit on a stale head
        reg.commit(params(0.3), branch="dev", expected=c1.id)
    log = reg.reflog("dev")
    assert [e.target for e in log] == [c1.id, c2.id]
    assert [e.previous for e in log] == [None, c1.id]


def test_the_head_is_found_without_the_hint_and_despite_a_damaged_one(reg):
    ids = [reg.commit(params(i / 10), branch="dev").id for i in range(5)]
    hint = f"{reg.root}/refs/heads/dev/head.json"
    with open(hint, "w") as f:
        f.write('{"seq": 2}')  # lagging, as a slow writer leaves it
    assert reg.resolve("dev") == ids[-1]
    with open(hint, "w") as f:
        f.write("{not json")
    assert reg.resolve("dev") == ids[-1]
    os.remove(hint)
    assert reg.resolve("dev") == ids[-1]


def check_no_lost_update(url: str, options: dict | None = None) -> None:
    """Several processes land updates on one ref by CAS with retry: every update is in the
    reflog, chained, none lost or overwritten."""
    workers, n = 4, 12
    log, landed, _ = contend(url, options, workers, n)
    assert len(log) == workers * n + 1 and len(landed) == workers * n
    assert sorted(e.target for e in log[1:]) == sorted(landed)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert all(b.previous == a.target for a, b in itertools.pairwise(log))


@pytest.mark.slow
def test_concurrent_ref_updates_from_processes_on_local_disk(tmp_path):
    check_no_lost_update(str(tmp_path / "store"))


# ---------------------------------------------------------------- commits
def test_commits_are_content_addressed_and_parameters_stored_once(reg):
    c1 = reg.commit(params(0.5), branch="dev", message="same weights", config=CONFIG)
    c2 = reg.commit(params(0.5), branch="feature/x", message="same weights", config=CONFIG)
    assert c1.params == c2.params and c1.id != c2.id  # other time; one parameter object
    assert len(reg.objects.digests()) == 1
    assert len([n for n in os.listdir(os.path.join(reg.root, "objects")) if n != "zarr.json"]) == 1
    assert c1.metrics["heldout_loss"] == pytest.approx(0.5)  # 0.5 ** 2 on each leaf
    assert reg.get(c1.id[:10]) == c1
    np.testing.assert_array_equal(reg.params("dev")["a"], params(0.5)["a"])


def test_revisions_resolve_like_git(reg):
    ids = [reg.commit(params(i / 10), branch="dev").id for i in range(3)]
    reg.tag("v1", "dev~1")
    assert reg.resolve("dev~2") == ids[0] and reg.resolve("v1") == ids[1]
    assert reg.resolve("v1~1") == ids[0]
    assert [c.id for c in reg.log("dev")] == ids[::-1]
    assert [c.id for c in reg.log("dev", limit=2)] == ids[:0:-1]
    with pytest.raises(RefNotFound, match="no branch, tag or commit named 'nope'"):
        reg.resolve("nope")
    with pytest.raises(RefNotFound, match="has no parent"):
        reg.resolve("dev~3")
    with pytest.raises(RefConflict, match="tag 'v1' exists"):
        reg.tag("v1", "dev")
    with pytest.raises(RefConflict, match="branch 'dev' exists"):
        reg.branch("dev", "v1")


def test_a_tampered_commit_record_is_detected(reg):
    c = reg.commit(params(0.5), branch="dev", message="honest")
    path = reg._commit_path(c.id)
    with open(path) as f:
        record = json.load(f)
    record["message"] = "forged"
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(CorruptData, match="does not match its id"):
        reg.get("dev")


def test_corrupt_or_missing_parameters_are_detected(reg, corrupt_chunk):
    c = reg.commit(params(0.5), branch="dev")
    obj = reg.objects.pointer(c.params)["object"]
    corrupt_chunk(reg.url, obj, "a")
    with pytest.raises(CorruptData):
        reg.params("dev")
    reg.objects.delete(c.params)
    with pytest.raises(StoreError, match="not in the registry"):
        reg.params("dev")
    assert reg.resolve("dev") == c.id  # the ref is untouched


def test_a_commit_with_an_unknown_parent_writes_nothing(reg):
    with pytest.raises(RefNotFound):
        reg.create(params(0.5), parents=("f" * 64,))
    assert reg.objects.digests() == []


# ---------------------------------------------------------------- gate
def test_gate_semantics_follow_mlflow_metric_threshold():
    worse, better = {"heldout_loss": 2.0}, {"heldout_loss": 1.0}
    assert not Gate(metric="heldout_loss").check(worse, better).passed
    assert Gate(metric="heldout_loss").check(better, worse).passed
    assert Gate(metric="heldout_loss").check(better, better).passed  # no worse
    g = Gate(metric="heldout_loss", min_absolute_change=0.5)
    assert g.check({"heldout_loss": 1.4}, worse).passed
    assert not g.check({"heldout_loss": 1.6}, worse).passed
    g = Gate(metric="heldout_loss", min_relative_change=0.3)
    assert (
        g.check({"heldout_loss": 1.4}, worse).passed
        and not g.check({"heldout_loss": 1.5}, worse).passed
    )
    g = Gate(metric="accuracy", threshold=0.9)
    assert g.check({"accuracy": 0.95}, None).passed and not g.check({"accuracy": 0.85}, None).passed
    v = Gate(metric="accuracy").check({"accuracy": 0.5}, {"accuracy": 0.6})
    assert not v.passed and "needs >= 0" in v.reasons[0]
    with pytest.raises(SpecError, match="versions.gate.metric = 'vibes' is not valid"):
        Gate(metric="vibes")


def test_promotion_refuses_a_worse_candidate_and_accepts_a_better_one(reg):
    reg.commit(params(0.5), branch="dev", config=CONFIG)  # loss 0.5
    ops.promote(reg, "dev", "prod")
    reg.commit(params(0.0), branch="dev", config=CONFIG)  # loss 2.0: worse
    with pytest.raises(GateRefused, match="refused") as refused:
        ops.promote(reg, "dev", "prod")
    assert refused.value.verdict.baseline == pytest.approx(0.5)
    assert reg.resolve("prod") == reg.resolve("dev~1")  # nothing moved
    reg.commit(params(0.9), branch="dev", config=CONFIG)  # loss 0.02: better
    moved = ops.promote(reg, "dev", "prod", message="better")
    assert moved.verdict.passed and reg.resolve("prod") == reg.resolve("dev")
    # forced past the gate: moved, and the reflog says so and why
    forced = ops.promote(reg, "dev~1", "prod", force=True, message="incident override")
    assert reg.reflog("prod")[-1].extra["forced"] is True
    assert (
        forced.verdict.reasons
        and "needs" in reg.reflog("prod")[-1].extra["gate"]["verdict"]["reasons"][0]
    )


def test_concurrent_promotions_one_wins_the_other_conflicts(reg):
    a = reg.commit(params(0.8), branch="dev", config=CONFIG)
    b = reg.commit(params(0.9), branch="feature/b", config=CONFIG, parents=())
    base = reg.commit(params(0.5), branch="prod", config=CONFIG)
    # both read prod at `base`; the first to create the next entry wins
    reg.set_branch("prod", a.id, expected=base.id, action="promote")
    with pytest.raises(RefConflict):
        reg.set_branch("prod", b.id, expected=base.id, action="promote")
    assert reg.resolve("prod") == a.id and len(reg.reflog("prod")) == 2


# ---------------------------------------------------------------- rollback / merges
def test_rollback_to_the_previous_or_any_earlier_commit(reg):
    ids = [reg.commit(params(x), branch="prod", config=CONFIG).id for x in (0.2, 0.4, 0.6)]
    assert ops.rollback(reg, "prod").entry.target == ids[1]
    assert ops.rollback(reg, "prod", ids[0]).entry.target == ids[0]
    other = reg.commit(params(0.7), branch="other", parents=())
    with pytest.raises(SpecError, match="never on 'prod'"):
        ops.rollback(reg, "prod", other.id)
    assert [e.action for e in reg.reflog("prod")][-2:] == ["rollback", "rollback"]


def test_fast_forward_only_when_the_target_is_an_ancestor(reg):
    base = reg.commit(params(0.5), branch="prod", config=CONFIG)
    reg.branch("feature/x", "prod")
    tip = reg.commit(params(0.6), branch="feature/x", config=CONFIG)
    assert ops.fast_forward(reg, "feature/x", "prod").entry.target == tip.id
    reg.commit(params(0.7), branch="prod", config=CONFIG)
    reg.set_branch("feature/x", base.id, expected=tip.id, action="reset")
    reg.commit(params(0.1), branch="feature/x", config=CONFIG)
    with pytest.raises(MergeConflict, match="not a fast-forward"):
        ops.fast_forward(reg, "feature/x", "prod")


def test_a_three_way_soup_merge_is_kept_when_it_evaluates_better(reg):
    base = reg.commit(params(0.0), branch="prod", config=CONFIG)
    reg.branch("feature/a", "prod")
    reg.branch("feature/b", "prod")
    reg.commit(params(1.0, 0.0), branch="feature/a", config=CONFIG)  # fixes leaf a
    ops.merge(reg, "feature/a", "prod")  # a fast-forward
    reg.commit(params(0.0, 1.0), branch="feature/b", config=CONFIG)  # fixes leaf b
    moved = ops.merge(reg, "feature/b", "prod")
    merged = reg.get("prod")
    assert moved.entry.action == "merge" and len(merged.parents) == 2
    assert merged.lineage["merge"]["base"] == base.id
    np.testing.assert_allclose(reg.params("prod")["a"], 0.5)  # the average of the two models
    assert merged.metrics["heldout_loss"] < reg.get("feature/a").metrics["heldout_loss"]


def test_a_merge_whose_eval_regresses_is_refused_and_moves_nothing(reg):
    reg.commit(params(0.5), branch="prod", config=CONFIG)
    reg.branch("feature/bad", "prod")
    good = reg.commit(params(1.0), branch="prod", config=CONFIG)  # loss 0
    reg.commit(params(-1.0), branch="feature/bad", config=CONFIG)  # diverges the other way
    with pytest.raises(MergeConflict, match="refused") as e:
        ops.merge(reg, "feature/bad", "prod")
    assert e.value.report["verdict"]["passed"] is False
    assert reg.resolve("prod") == good.id


def test_a_merge_of_unrelated_histories_is_refused(reg):
    reg.commit(params(0.5), branch="prod", config=CONFIG)
    reg.commit(params(0.6), branch="orphan", config=CONFIG)
    with pytest.raises(MergeConflict, match="unrelated histories"):
        ops.merge(reg, "orphan", "prod")


def test_ties_trims_elects_signs_and_averages_agreeing_entries():
    base = {"w": np.zeros(6, np.float32)}
    a = {"w": np.array([4, -1, 0.1, 3, 0, 0], np.float32)}
    b = {"w": np.array([2, 1, 0.1, -5, 0, 0], np.float32)}
    out = merge_params(base, a, b, "ties", density=0.5)["w"]
    # trimmed to the top 3: a -> [4, -1, 3], b -> [2, 1, -5]; signs: +, 0, -; mean of agreeing
    np.testing.assert_allclose(out, [3, 0, 0, -5, 0, 0])
    soup = merge_params(base, a, b, "soup")["w"]
    np.testing.assert_allclose(soup, (a["w"] + b["w"]) / 2)


# ---------------------------------------------------------------- gc
def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_gc_deletes_what_nothing_needs_and_keeps_the_rest(reg):
    ids = [reg.commit(params(x / 10), branch="dev", config=CONFIG).id for x in range(6)]
    reg.tag("v0", ids[0])
    reg.branch("prod", ids[3])
    dangling = reg.create(params(0.77), parents=(ids[-1],))  # a refused merge, say
    before = _du(reg.root)
    dry = gc.collect(reg, dry_run=True, retention_days=0, grace_seconds=0)
    assert _du(reg.root) == before  # a dry run deletes nothing
    report = gc.collect(reg, retention_days=0, grace_seconds=0)
    assert sorted(report.deleted_params) == sorted(dry.deleted_params)
    assert len(report.deleted_params) == 4  # ids 1, 2, 4 and the dangling one
    assert report.deleted_commits == [dangling.id]
    assert _du(reg.root) < before - 0.4 * report.deleted_bytes
    for rev in ("dev", "prod", "v0"):
        reg.params(rev)  # every ref still checks out
    assert [c.id for c in reg.log("dev")] == ids[::-1]  # history stays readable
    with pytest.raises(StoreError, match="garbage-collected"):
        reg.params(ids[1])


def test_gc_keeps_recent_reflog_entries_pins_and_young_data(reg):
    ids = [reg.commit(params(x / 10), branch="dev", config=CONFIG).id for x in range(4)]
    assert gc.collect(reg, grace_seconds=0).deleted_params == []  # all within the retention
    assert gc.collect(reg, retention_days=0).deleted_params == []  # all within the grace
    report = gc.collect(reg, retention_days=0, grace_seconds=0, pins=[ids[1]])
    kept = {reg.get(i).params for i in (ids[1], ids[3])}
    assert set(reg.objects.digests()) == kept and len(report.deleted_params) == 2


def test_deleting_a_branch_is_a_reflog_entry_and_unpins_it(reg):
    c = reg.commit(params(0.3), branch="feature/x", config=CONFIG)
    reg.commit(params(0.4), branch="dev", config=CONFIG)
    reg.delete_branch("feature/x")
    assert "feature/x" not in reg.branches()
    assert reg.reflog("feature/x")[-1].action == "delete"
    gc.collect(reg, retention_days=0, grace_seconds=0)
    assert c.params not in reg.objects.digests()
    with pytest.raises(RefNotFound):
        reg.delete_branch("feature/x", expected=ANY)
