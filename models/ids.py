"""Id normalisation shared by training and serving.

Every id that enters the system (a loader's row, a gRPC request field) goes
through these functions, so that the same book or reader always maps to one
key, whatever its spelling.

Books (``scheme="isbn"``): an ISBN is reduced to its digits and check
character, and ISBN-10s are rewritten as their ISBN-13 (``978`` prefix, check
digit recomputed); an ISBN-13 keeps its digits. So ``0-345-33968-1``,
``034533968x``, ``0345339681`` and ``9780345339683`` are one book:
``9780345339683``. A string that is not
ISBN-shaped (not 10 or 13 digits, an ``X`` allowed only as the last of ten)
keeps its upper-cased letters and digits, so odd catalogue ids stay distinct
rather than being guessed at.

Books (``scheme="plain"``, MovieLens and goodbooks ids): surrounding white
space is removed; nothing else changes.

Readers: surrounding white space is removed, and an all-digit id loses its
leading zeros (``"00042"`` and ``"42"`` are one reader).
"""

from __future__ import annotations

import re
from typing import Literal

IdScheme = Literal["isbn", "plain"]
ID_SCHEMES: tuple[IdScheme, ...] = ("isbn", "plain")

_NOT_ISBN_CHAR = re.compile(r"[^0-9X]")
_NOT_ALNUM = re.compile(r"[^0-9A-Z]")


def isbn13_check_digit(first12: str) -> str:
    """Check digit of an ISBN-13 from its first 12 digits (weights 1, 3, ...)."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return str((10 - total % 10) % 10)


def normalize_isbn(raw: str) -> str:
    """Canonical ISBN-13 for any spelling of an ISBN; cleaned text otherwise.

    Returns an empty string when nothing of the id is left after cleaning.
    """
    upper = raw.strip().upper()
    cleaned = _NOT_ISBN_CHAR.sub("", upper)
    if len(cleaned) == 10 and "X" not in cleaned[:9]:
        body = "978" + cleaned[:9]
        return body + isbn13_check_digit(body)
    if len(cleaned) == 13 and "X" not in cleaned:
        return cleaned
    return _NOT_ALNUM.sub("", upper)


def normalize_book_id(raw: str, scheme: IdScheme = "isbn") -> str:
    """Canonical book id under ``scheme`` ("isbn" or "plain")."""
    if scheme == "isbn":
        return normalize_isbn(raw)
    if scheme == "plain":
        return raw.strip()
    raise ValueError(f"scheme must be one of {ID_SCHEMES}, got {scheme!r}")


def normalize_user_id(raw: str) -> str:
    """Canonical reader id: stripped, and an all-digit id without leading zeros."""
    cleaned = raw.strip()
    if cleaned.isdigit():
        return str(int(cleaned))
    return cleaned
