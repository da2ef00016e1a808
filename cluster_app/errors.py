"""The exception tree of cluster_app.

Every error this package raises on purpose derives from :class:`ClusterAppError`, and the
ones caused by a caller's input also derive from :class:`ValueError`, so existing
``except ValueError`` blocks keep working::

    ClusterAppError
    ├── ConfigError(ValueError)        a config key is missing, of the wrong type or out of range
    ├── SpecError(ValueError)          a run/model/dataset argument is invalid
    │   └── InvalidRefName             a branch or tag name git's check-ref-format refuses
    ├── StoreError                     the parameter store cannot do what was asked
    │   ├── VersionNotFound(KeyError)  no committed version with that number
    │   ├── RefNotFound(KeyError)      no branch, tag or commit of the registry by that name
    │   ├── CommitConflict             another writer committed that version first (OCC)
    │   │   └── RefConflict            a ref's head moved since the caller read it (CAS)
    │   └── CorruptData                a checksum, digest, shape, dtype or finiteness check failed
    ├── GateRefused                    the eval gate refused a promotion (``verdict`` says why)
    ├── MergeConflict                  unrelated histories, or a merged model that evaluates worse
    └── RunError(RuntimeError)         a training run could not continue
"""

from __future__ import annotations

__all__ = [
    "ClusterAppError",
    "CommitConflict",
    "ConfigError",
    "CorruptData",
    "GateRefused",
    "InvalidRefName",
    "MergeConflict",
    "RefConflict",
    "RefNotFound",
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


class InvalidRefName(SpecError):
    """A branch or tag name that git's ``check-ref-format`` would refuse."""


class RefNotFound(StoreError, KeyError):
    """No branch, tag or commit of the registry answers to that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RefConflict(CommitConflict):
    """A ref's head is not the one the update expected: another writer moved it first."""


class GateRefused(ClusterAppError):
    """The eval gate refused a promotion; ``verdict`` holds the figures and the reasons."""

    def __init__(self, message: str, verdict: object = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class MergeConflict(ClusterAppError):
    """Two branches share no history, or their merged weights evaluate worse than the target."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}
