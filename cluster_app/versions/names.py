"""Ref names, checked by the rules of ``git check-ref-format`` (one-level names allowed).

A name is refused, with the rule it breaks, if it:

- is empty, is ``@``, begins or ends with ``/`` or contains ``//``;
- has a component that begins with ``.`` or ends with ``.lock``;
- contains ``..``, ``@{``, a backslash, a space, an ASCII control character or any of
  ``~ ^ : ? * [``;
- ends with ``.``.

Ours adds one rule: a name may not look like a commit id (hex, 7 or more characters), so that a
revision never means two things.
"""

from __future__ import annotations

import re

from cluster_app.errors import InvalidRefName

__all__ = ["BRANCH", "KINDS", "TAG", "check_ref_name", "looks_like_id"]

BRANCH, TAG = "heads", "tags"
KINDS = (BRANCH, TAG)
_FORBIDDEN = set(" ~^:?*[\\")
_HEX = re.compile(r"[0-9a-f]{7,64}")


def looks_like_id(name: str) -> bool:
    """Whether ``name`` could be (a prefix of) a commit id."""
    return bool(_HEX.fullmatch(name))


def _problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if name == "@":
        return "it is the single character '@'"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "it begins or ends with '/' or has an empty component"
    if name.endswith("."):
        return "it ends with '.'"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name:
        return "it contains '@{'"
    bad = sorted({c for c in name if c in _FORBIDDEN or ord(c) < 0x20 or ord(c) == 0x7F})
    if bad:
        return f"it contains {', '.join(repr(c) for c in bad)}"
    for part in name.split("/"):
        if part.startswith("."):
            return f"its component {part!r} begins with '.'"
        if part.endswith(".lock"):
            return f"its component {part!r} ends with '.lock'"
    if looks_like_id(name):
        return "it looks like a commit id"
    return None


def check_ref_name(name: object) -> str:
    """``name`` if it is a valid ref name, else :class:`InvalidRefName` saying why not."""
    if not isinstance(name, str):
        raise InvalidRefName(f"a ref name must be a string, not {type(name).__name__}")
    problem = _problem(name)
    if problem is not None:
        raise InvalidRefName(f"invalid ref name {name!r}: {problem} (see git check-ref-format)")
    return name
