"""Perpetual training's storage side: Orbax checkpoints and when to take them.

- ``policy.py``      when to checkpoint: every N rounds and/or T seconds (Young/Daly helper)
- ``checkpoint.py``  Orbax CheckpointManager wrapper: async saves, keep N, validated restore
                     that falls back past a corrupted or partial latest checkpoint

What a run does with them (resume paths, the run record, goodput) is in ``cluster_app.runs``;
fault injection (kill -9, corrupted checkpoints, the soak) is in ``cluster_app.testing``.
"""
