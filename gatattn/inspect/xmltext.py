"""A lossless escape for text that XML cannot hold (GraphML and GEXF files).

XML 1.0 has no way to write some characters, not even as character references: the controls
U+0000-U+0008, U+000B, U+000C, U+000E-U+001F, lone surrogates U+D800-U+DFFF, U+FFFE and
U+FFFF. A file that contains one cannot be read back. XML readers also turn ``\\r\\n`` and a lone
``\\r`` in element text into ``\\n``. So ``write_graph`` writes every string attribute (tokens
above all) through ``escape_xml_text``, and ``read_graph`` reverses it with
``unescape_xml_text``:

- A string made of XML-safe characters that does not start with ``XML_ESCAPE_PREFIX`` is
  written unchanged, so ordinary tokens read back identical through NetworkX's own readers.
- Any other string is written as ``XML_ESCAPE_PREFIX`` followed by the string, where every
  unsafe character, ``\\r`` and the backslash are written as ``\\uXXXX`` (4 hex digits: every
  unsafe character is in the Basic Multilingual Plane). The prefix makes the escape
  unambiguous: a token that happens to start with it is escaped too.

Hand-written: neither the standard library nor NetworkX has an escape for characters that XML
forbids (``xml.sax.saxutils.escape`` handles ``& < >`` only, which the writers already do).
"""

from __future__ import annotations

import re

__all__ = ["XML_ESCAPE_PREFIX", "escape_xml_text", "unescape_xml_text"]

#: Marks a string written with ``\\uXXXX`` escapes (docs/export.md, "Tokens XML cannot hold").
XML_ESCAPE_PREFIX = "gatattn-escaped:"

# characters that must be escaped: XML-illegal ones, \r (normalised to \n by readers), backslash
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\\\\\ud800-\udfff\ufffe\uffff]")
_ESCAPED = re.compile(r"\\u([0-9a-f]{4})")


def escape_xml_text(text: str) -> str:
    """``text`` unchanged when XML holds it as is, else ``XML_ESCAPE_PREFIX`` + ``\\uXXXX``
    escapes of its unsafe characters and backslashes (lossless; see the module docstring)."""
    if not text.startswith(XML_ESCAPE_PREFIX) and not _UNSAFE.search(text.replace("\\", "")):
        return text
    return XML_ESCAPE_PREFIX + _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def unescape_xml_text(text: str) -> str:
    """The inverse of ``escape_xml_text``: ``unescape_xml_text(escape_xml_text(s)) == s``."""
    if not text.startswith(XML_ESCAPE_PREFIX):
        return text
    body = text[len(XML_ESCAPE_PREFIX) :]
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), body)
