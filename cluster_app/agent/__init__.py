"""The agent: pure JAX on one worker (``worker.py`` is its Dask side).

- ``spec.py``      ``AgentSpec``: what an agent is, as validated plain data (no JAX)
- ``messages.py``  ``RoundResult``: what an agent's round task returns (no JAX)
- ``models.py``    pure model factories (MLP classifier, character transformer LM)
- ``state.py``     ``TrainState`` pytree, optax optimisers, schedules, jitted train/eval steps
- ``data.py``      stdlib code corpus and sklearn digits, deterministic (round, shard) batches
- ``agent.py``     ``Agent``: a model + optimiser state + data, trained from global versions
- ``worker.py``    ``AgentPlugin`` (Dask WorkerPlugin) and the task functions runs submit
"""
