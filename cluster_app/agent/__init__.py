"""The agent: pure JAX on one worker.

- ``models.py``  pure model factories (MLP classifier, character transformer LM)
- ``state.py``   ``TrainState`` pytree, optax optimisers, jitted train/eval steps
- ``data.py``    stdlib code corpus and sklearn digits, deterministic (round, shard) batches
- ``agent.py``   ``Agent``: a model + optimiser state + data, trained from global versions
- ``worker.py``  ``AgentPlugin`` (Dask WorkerPlugin) and the task functions runs submit
"""
