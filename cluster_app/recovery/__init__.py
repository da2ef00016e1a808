"""Perpetual training: checkpoints, rollback, run state, chaos.

- ``policy.py``      when to checkpoint: every N rounds and/or T seconds (Young/Daly helper)
- ``checkpoint.py``  Orbax CheckpointManager wrapper: async saves, keep N, validated restore
                     that falls back past a corrupted or partial latest checkpoint
- ``runstate.py``    the durable run record in the store: spec, desired state, status, goodput
- ``chaos.py``       fault injection on a running local cluster (kill -9, corrupt, restart)
"""
