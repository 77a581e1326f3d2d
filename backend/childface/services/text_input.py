"""The one check every text field goes through, from the API, the CSV import and the CLI alike.

`clean_field` normalises to Unicode NFKC (so "Ｃ００１" and "C001" are one
external id), strips surrounding white space, enforces the length, and refuses
characters that hide or reorder what a person reads:

- control characters (Unicode category Cc: NUL, escape, DEL, ...); multi-line
  fields (notes) keep line feed and tab, and a CR LF becomes LF;
- format characters (category Cf): bidirectional embeddings, overrides and
  isolates (U+202A-U+202E, U+2066-U+2069), marks (U+200E, U+200F, U+061C),
  zero-width space and BOM (U+200B, U+FEFF), soft hyphen, and the rest. Only
  the zero-width non-joiner and joiner (U+200C, U+200D) are kept: Persian and
  Indic names and emoji sequences need them, and they cannot reorder text;
- line and paragraph separators (U+2028, U+2029) outside multi-line fields,
  and surrogate, private-use and unassigned code points.

A value is refused, never silently repaired: the message names the field and
the character, so a person can fix the source.
"""

from __future__ import annotations

import unicodedata

from childface.services.errors import InvalidInput

#: format characters that legitimately occur in names (they join or separate letters, nothing more)
ALLOWED_FORMAT = frozenset({"\u200c", "\u200d"})
#: characters a multi-line field may keep
MULTILINE_CONTROLS = frozenset({"\n", "\t"})
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why `value` (already normalised) cannot be stored, or None; names the first bad character."""
    for position, char in enumerate(value, start=1):
        if multiline and char in MULTILINE_CONTROLS:
            continue
        if char in ALLOWED_FORMAT:
            continue
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES:
            name = unicodedata.name(char, "control character" if category == "Cc" else "unassigned")
            return f"contains U+{ord(char):04X} ({name.lower()}) at position {position}"
    return None


def normalise(value: str, *, multiline: bool = False) -> str:
    """NFKC, line ends as LF (multi-line fields), surrounding white space stripped."""
    value = unicodedata.normalize("NFKC", value)
    if multiline:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    return value.strip()


def clean_field(
    field: str, value: str | None, *, max_length: int, required: bool, multiline: bool = False
) -> str | None:
    """The stored form of a text field, or InvalidInput naming `field`.

    Blank optional values become None; a required value must not be blank.
    """
    if value is None:
        if required:
            raise InvalidInput(f"{field} is required")
        return None
    value = normalise(value, multiline=multiline)
    if not value:
        if required:
            raise InvalidInput(f"{field} must not be empty")
        return None
    if len(value) > max_length:
        raise InvalidInput(f"{field} is longer than {max_length} characters")
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        raise InvalidInput(f"{field} {problem}")
    return value
