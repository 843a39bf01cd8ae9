"""Shape checks shared by the content loaders: each refusal is the loader's own error,
naming the place in the file."""

from __future__ import annotations

import pytest

from cds_service import toml_checks
from cds_service.config import ConfigError


class CardFileError(ConfigError):
    """A loader's own error class."""


def test_a_table_or_a_list_is_returned_as_it_is():
    assert toml_checks.table({"a": 1}, "cards/x.toml [figures]") == {"a": 1}
    assert toml_checks.listing([1, 2], "cards/x.toml sources") == [1, 2]


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (toml_checks.table, [1], "cards/x.toml [figures]: must be a table"),
        (toml_checks.table, "x", "cards/x.toml [figures]: must be a table"),
        (toml_checks.listing, {"a": 1}, "cards/x.toml [figures]: must be a list"),
    ],
)
def test_the_wrong_shape_is_the_loaders_error_naming_the_place(check, value, message):
    with pytest.raises(CardFileError) as refused:
        check(value, "cards/x.toml [figures]", CardFileError)
    assert str(refused.value) == message


def test_an_unknown_key_is_named_with_the_keys_allowed():
    with pytest.raises(ConfigError) as refused:
        toml_checks.known_keys({"label": "x", "colour": "red"}, {"label", "kind"}, "[concepts.hfs]")
    assert str(refused.value) == "[concepts.hfs]: unknown keys ['colour'] (allowed: ['kind', 'label'])"


def test_missing_required_keys_are_named():
    with pytest.raises(CardFileError, match=r"^\[concepts.hfs\]: missing codes, kind$"):
        toml_checks.known_keys(
            {"label": "x"}, {"label", "kind", "codes"}, "[concepts.hfs]", {"kind", "codes"}, CardFileError
        )
    toml_checks.known_keys({"label": "x", "kind": "y"}, {"label", "kind"}, "[concepts.hfs]", {"kind"})
