"""What a worker's start needs besides the plugin: JAX's settings applied from the worker's
environment, and figures for the cold-start breakdown (no Dask here; JAX imported lazily)."""

from __future__ import annotations

__all__ = ["apply_jax_settings", "cache_entries", "process_start"]


def process_start() -> float:
    """When this process started (``time.time()`` seconds)."""
    import psutil

    return psutil.Process().create_time()


def apply_jax_settings() -> None:
    """Apply the worker's JAX settings from its environment (:func:`cluster_app.cluster.worker_env`)
    even if JAX was imported before the nanny set them.

    JAX reads ``JAX_COMPILATION_CACHE_DIR`` and the like once, when it is imported, and a
    spawned worker imports its parent's ``__main__`` before the nanny's environment applies: a
    script that imports JAX (or Orbax) at the top would otherwise start every worker with the
    persistent compilation cache off, compiling from scratch at each (re)start.
    """
    import os

    import jax

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    least = os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    if least is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(least))


def cache_entries() -> int | None:
    """Programs in JAX's persistent compilation cache (None: no cache configured)."""
    import os

    path = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if not path:
        return None
    try:
        return sum(1 for e in os.scandir(path) if e.is_file())
    except FileNotFoundError:
        return 0
