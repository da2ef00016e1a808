"""Parameter storage and synchronisation.

- ``store.py``  ``ParamStore``: immutable versions on zarr v3, exclusive commit records (OCC)
- ``tree.py``   nested-dict pytrees <-> flat ``{"a/b": array}`` dicts (no JAX)
"""
