"""Id normalisation: every spelling rule of ``bookverse.models.ids``."""

from __future__ import annotations

import pytest

from bookverse.models.ids import (
    isbn13_check_digit,
    normalize_book_id,
    normalize_isbn,
    normalize_user_id,
)

HOBBIT = "9780345339683"


@pytest.mark.parametrize(
    "raw", ["0-345-33968-1", "034533968x", "034533968X", "0345339681", HOBBIT]
)
def test_spellings_of_one_isbn_meet(raw: str) -> None:
    assert normalize_isbn(raw) == HOBBIT


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" 0345339681\t", HOBBIT),  # surrounding white space
        ('"0345339681"', HOBBIT),  # stray quotes
        ("ISBN 0345339681", HOBBIT),  # letters other than X are not ISBN characters
        ("978-0-345-33968-3", HOBBIT),  # hyphenated ISBN-13
    ],
)
def test_non_isbn_characters_are_removed(raw: str, expected: str) -> None:
    assert normalize_isbn(raw) == expected


def test_isbn10_check_digit_is_recomputed_for_the_isbn13() -> None:
    # the ISBN-10 check character is dropped, whatever it was
    assert normalize_isbn("0345339689") == HOBBIT


def test_isbn13_keeps_its_digits_even_with_a_wrong_check_digit() -> None:
    assert normalize_isbn("9780345339680") == "9780345339680"


def test_isbn13_check_digit() -> None:
    assert isbn13_check_digit("978030640615") == "7"
    assert isbn13_check_digit("978034533968") == "3"
    assert isbn13_check_digit("978000000000") == "2"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("b00009any9", "B00009ANY9"),  # not ISBN-shaped: upper-cased alphanumerics
        ("03453X9681", "03453X9681"),  # an X before the last of ten
        ("978034533968X", "978034533968X"),  # an X in thirteen
        ("12345", "12345"),  # too short
        ("034533968-1-2", "03453396812"),  # eleven digits
        ("b0-00 09", "B00009"),
    ],
)
def test_ids_that_are_not_isbn_shaped_stay_distinct(raw: str, expected: str) -> None:
    assert normalize_isbn(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "---", '""'])
def test_nothing_left_is_an_empty_id(raw: str) -> None:
    assert normalize_isbn(raw) == ""
    assert normalize_book_id(raw, "isbn") == ""


def test_book_id_schemes() -> None:
    assert normalize_book_id("0345339681") == HOBBIT
    assert normalize_book_id(" 0345339681 ", "plain") == "0345339681"
    assert normalize_book_id(" 007 ", "plain") == "007"
    assert normalize_book_id("", "plain") == ""


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme must be one of"):
        normalize_book_id("1", "asin")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", "42"),
        ("00042", "42"),
        (" 00042 ", "42"),
        ("0", "0"),
        ("000", "0"),
        ("reader-007", "reader-007"),  # not all digits: only stripped
        (" ab 01 ", "ab 01"),
        ("", ""),
        ("  ", ""),
    ],
)
def test_user_ids(raw: str, expected: str) -> None:
    assert normalize_user_id(raw) == expected
