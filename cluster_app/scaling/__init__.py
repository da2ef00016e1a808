"""Elastic scaling: one adaptive target on the scheduler, and safe scale-down.

- ``policy.py``  the pure desired-workers policy and its stabiliser (no Dask)
- ``plugin.py``  ``ScalingPlugin``: installs the policy as the scheduler's ``adaptive_target``
  (what ``LocalCluster.adapt()`` and the dask-kubernetes operator ask) and filters the workers
  Dask may retire (``valid_workers_downscaling``)
"""
