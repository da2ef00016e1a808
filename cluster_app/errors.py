"""The exception tree of cluster_app.

Every error this package raises on purpose derives from :class:`ClusterAppError`, and the
ones caused by a caller's input also derive from :class:`ValueError`, so existing
``except ValueError`` blocks keep working::

    ClusterAppError
    ├── ConfigError(ValueError)        a config key is missing, of the wrong type or out of range
    ├── SpecError(ValueError)          a run/model/dataset argument is invalid
    ├── StoreError                     the parameter store cannot do what was asked
    │   ├── VersionNotFound(KeyError)  no committed version with that number
    │   ├── CommitConflict             another writer committed that version first (OCC)
    │   └── CorruptData                a checksum, shape, dtype or finiteness check failed
    └── RunError(RuntimeError)         a training run could not continue
"""

from __future__ import annotations

__all__ = [
    "ClusterAppError",
    "CommitConflict",
    "ConfigError",
    "CorruptData",
    "RunError",
    "SpecError",
    "StoreError",
    "VersionNotFound",
]


class ClusterAppError(Exception):
    """Base class of every error raised on purpose by cluster_app."""


class ConfigError(ClusterAppError, ValueError):
    """A configuration value is missing, has the wrong type, or is out of range."""


class SpecError(ClusterAppError, ValueError):
    """An argument describing a run, model or dataset is invalid."""


class StoreError(ClusterAppError):
    """The parameter store could not complete an operation."""


class VersionNotFound(StoreError, KeyError):
    """No committed version with the requested number exists."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CommitConflict(StoreError):
    """Another writer committed this version first (optimistic concurrency control)."""


class CorruptData(StoreError):
    """Stored or submitted data failed a checksum, shape, dtype or finiteness check."""


class RunError(ClusterAppError, RuntimeError):
    """A training run could not continue."""
