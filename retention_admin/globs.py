"""Task-name globs: validation and translation to a regular expression.

One parser serves both sides of the matcher. Python matches with
``fnmatch.fnmatchcase`` and SQL with the regular expression built here, so the
accepted syntax is the subset on which the two mean exactly the same thing on
SQLite (Python ``re``), PostgreSQL (ARE) and MySQL/MariaDB (PCRE/ICU):

* ``*`` any run of characters, ``?`` one character;
* ``[abc]``, ``[a-z0-9]``, ``[!abc]`` a set of letters, digits, ``_ . : - @ /``;
* everything else printable stands for itself; no whitespace or control characters.

The *names* matched are free text (any Unicode, newlines included), so the
anchors and the dot differ by engine: ``fnmatch`` lets ``*`` cross a newline and
anchors at the very end of the string, while a plain ``.`` in Python ``re`` and
PCRE stops at a newline and their ``$`` also matches before a final one.
``anchored`` writes each engine's exact form.
"""

from __future__ import annotations

import re

MAX_LENGTH = 255
_SET_CHARS = re.compile(r"[A-Za-z0-9_.:@/-]")


class GlobError(ValueError):
    """A task-name pattern outside the supported glob syntax."""


def _escape(char: str) -> str:
    # A backslash before a non-alphanumeric character is a literal in Python re,
    # PostgreSQL AREs and PCRE/ICU alike.
    return char if char.isalnum() or char == "_" else "\\" + char


def _parse_set(pattern: str, start: int) -> tuple[str, int]:
    """Translate the set opening at ``pattern[start] == "["``; return regex and next index."""
    end = pattern.find("]", start + 1)
    if end == -1:
        raise GlobError(f"the '[' at position {start + 1} is never closed with ']'")
    body = pattern[start + 1 : end]
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    if not body:
        raise GlobError(f"the set at position {start + 1} is empty")
    ranges, singles = [], []
    i = 0
    while i < len(body):
        char = body[i]
        if not _SET_CHARS.fullmatch(char):
            raise GlobError(
                f"{char!r} cannot be used inside [...]; sets take letters, digits and _ . : - @ /"
            )
        if char != "-" and i + 2 < len(body) and body[i + 1] == "-":
            low, high = char, body[i + 2]
            same_class = (low.isdigit() and high.isdigit()) or (
                low.isalpha() and high.isalpha() and low.islower() == high.islower()
            )
            if not same_class or low > high:
                raise GlobError(
                    f"{low}-{high} inside [...] is not a range of digits or of same-case letters"
                )
            ranges.append(f"{low}-{high}")
            i += 3
        elif char == "-" and 0 < i < len(body) - 1:
            raise GlobError("inside [...], '-' stands for itself only first or last")
        else:
            singles.append(char)
            i += 1
    # Inside brackets these characters are literal in every engine; a '-' goes last,
    # where all of them read it as itself.
    literal = "".join(sorted(set(singles), key=lambda c: (c == "-", c)))
    return ("[^" if negated else "[") + "".join(ranges) + literal + "]", end + 1


def glob_to_regex(pattern: str) -> str:
    """Return the regular expression of ``pattern``, unanchored; raise GlobError.

    Use ``anchored`` for the form an engine takes.
    """
    if len(pattern) > MAX_LENGTH:
        raise GlobError(f"the pattern is longer than {MAX_LENGTH} characters")
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if not char.isprintable() or char.isspace():
            raise GlobError(f"whitespace or control character at position {i + 1}")
        if char == "*":
            out.append(".*")
            i += 1
        elif char == "?":
            out.append(".")
            i += 1
        elif char == "[":
            regex, i = _parse_set(pattern, i)
            out.append(regex)
        elif char == "]":
            raise GlobError(f"the ']' at position {i + 1} closes no '['")
        else:
            out.append(_escape(char))
            i += 1
    return "".join(out)


# Per engine: what makes "." match every character, the start and the very end.
_ANCHORS = {
    # Python re (SQLite's REGEXP): DOTALL, and \Z is the end of the string only.
    "python": ("(?s)^", "\\Z"),
    # PostgreSQL AREs are not newline-sensitive by default: "." matches \n, "$" is the end.
    "postgresql": ("^", "$"),
    # PCRE (MariaDB): case-sensitive under a case-insensitive collation, DOTALL, \z the end.
    "mariadb": ("(?-i)(?s)^", "\\z"),
    # ICU (MySQL 8): DOTALL, \z the end (case sensitivity is REGEXP_LIKE's 'c').
    "mysql": ("(?s)^", "\\z"),
}


def anchored(pattern: str, engine: str) -> str:
    """The regular expression matching exactly what ``fnmatch.fnmatchcase`` matches,
    for ``engine`` (python, postgresql, mariadb, mysql); raise GlobError."""
    start, end = _ANCHORS[engine]
    return start + glob_to_regex(pattern) + end


def validate_glob(pattern: str) -> None:
    """Raise GlobError when ``pattern`` is outside the supported syntax."""
    glob_to_regex(pattern)
