"""MkDocs hook: the Sphinx roles of sathmr's docstrings (``:class:`X```) shown as plain code in the API pages.

The docstrings are written to read well in ``help()`` and editors, where ``:func:`load_model``` is the
usual way to name another object; Markdown would print the role itself. Dropping the prefix keeps the
name as code (no cross-reference is guessed, so a renamed object cannot break the strict build).
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc|obj):(?=<code>)")


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub("", html)
