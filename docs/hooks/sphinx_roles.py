"""Griffe extension for the API reference: the reST left in numpydoc docstrings.

The docstrings are written to read well in ``help()``; some name other objects the Sphinx way
(``:class:`~cluster_app.errors.ConfigError```) and end a paragraph with ``::`` before an
indented block, which mkdocstrings would print literally. A role becomes a code span of the
name (its last part with ``~``, as Sphinx shows it); a closing ``::`` becomes ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|exc|obj):`(~?)([^`]+)`")
LITERAL = re.compile(r"(\S)::$", re.MULTILINE)


def plain(text: str) -> str:
    def code(m: re.Match) -> str:
        short, name = m.groups()
        return f"`{name.rsplit('.', 1)[-1] if short else name}`"

    return LITERAL.sub(r"\1:", ROLE.sub(code, text))


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
