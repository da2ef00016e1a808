"""Parameter storage and synchronisation (system S3 and S5; ``docs/sync.md``).

Map (pure core first; nothing here imports Dask, and only ``outer`` and ``coordinator`` import
optax)::

    tree.py         nested-dict pytrees <-> flat ``{"a/b": array}`` dicts, SHA-256 digests
    codecs.py       fp32 / fp16 / int8 / int4 / int3 / int2 codecs (absmax blocks) + error feedback
    congestion.py   WindowedExecutor: AIMD window over concurrent chunk writes
    spec.py         SyncSpec: codec, outer optimiser, snapshot cadence, staleness, timeouts
    push.py         Push: one agent's delta for one round, as the coordinator folds it
    objects.py      ObjectIO: sealed zarr v3 objects (checksummed chunks, a seal when complete)
    store.py        ParamStore: immutable versions, exclusive commit records (OCC), delta chains,
                    validated reads with fallback (commit_full / commit_delta / read / read_valid)
    outer.py        the outer optimiser (optax: averaging or DiLoCo's Nesterov), staleness weights
    coordinator.py  Coordinator: validates, weights and folds pushes into the next version
"""
