"""Maths on the documentation site: the docstrings' ``.. math::`` directives rendered by KaTeX.

The docstrings keep PyG's ``.. math::`` blocks (reStructuredText), which Markdown shows as plain
text. Two pieces, both named in mkdocs.yml:

- ``MathDirectives``, a Griffe extension (mkdocstrings' ``extensions``): before a docstring is
  rendered, each ``.. math::`` directive becomes a ``$$ ... $$`` block that pymdownx.arithmatex
  marks for KaTeX (vendored in docs/assets/katex/, rendered by docs/assets/katex-init.js);
- ``on_post_page``, a MkDocs hook: a built page that still holds a reStructuredText directive
  (``.. math::``, ``.. note::``, ...) as text fails the build.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
LEFTOVER = re.compile(r"\.\. [a-z][\w-]*::")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def math_to_arithmatex(text: str) -> str:
    """``text`` with every ``.. math::`` directive as a ``$$`` block of its own paragraph.

    The formula is the rest of the directive line plus the lines indented deeper than the
    directive (blank lines inside included); it is written at the directive's indentation, with
    blank lines around it, so that Markdown neither joins it to a paragraph nor reads it as code.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = DIRECTIVE.match(lines[i])
        if m is None:
            out.append(lines[i])
            i += 1
            continue
        pad, depth = m.group("indent"), _indent(lines[i])
        body = [m.group("first").strip()] if m.group("first").strip() else []
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > depth):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            i -= 1  # trailing blank lines belong to the text after the directive
            block.pop()
        inner = min((_indent(b) for b in block if b.strip()), default=0)
        body += [b[inner:].rstrip() for b in block]
        if out and out[-1].strip():
            out.append("")
        out += [f"{pad}$$", *(f"{pad}{b}" if b else "" for b in body), f"{pad}$$"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


class MathDirectives(Extension):
    """Griffe extension: ``.. math::`` directives in docstrings become arithmatex blocks."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ".. math::" in obj.docstring.value:
            obj.docstring.value = math_to_arithmatex(obj.docstring.value)


def on_post_page(output: str, page: Any, config: Any) -> str:
    """Fail the build on a reStructuredText directive left as text on a page."""
    text = re.sub(r"<(pre|code)\b.*?</\1>", "", output, flags=re.S)  # code may show one
    found = sorted(set(LEFTOVER.findall(text)))
    if found:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{page.file.src_uri}: unrendered directive(s) {found} in the page")
    return output
