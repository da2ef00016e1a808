"""Tools for tests, benchmarks and the chaos CLI (like ``distributed.utils_test``).

Nothing in the product imports these; they act on real processes, workers and files, so use
them on clusters you own::

    emulate.py   Handicap (WorkerPlugin) + ``work``: slow or distant workers on one machine
    naive.py     the source document's pseudo-code as a scheduler plugin (a baseline)
    chaos.py     kill -9 a worker or a node, find a run's controller, corrupt a checkpoint
    soak.py      the chaos soak: a durable run under repeated kills, then every version read
"""
