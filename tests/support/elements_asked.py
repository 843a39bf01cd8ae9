"""Which elements readers ask decoded resources for (fhir/decode.py): an element asked for
but not declared reads as absent, silently; the tests that guard against it note each one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cds_service.fhir.decode import Decoding


@contextmanager
def elements_asked(decoding: Decoding) -> Iterator[set[str]]:
    """The names asked of any decoded resource (`get`, `[...]`, `in`) while the block runs."""
    asked: set[str] = set()
    classes = [cls for cls in decoding.classes if cls is not decoding.Entry]  # resources only
    saved = {(cls, name): getattr(cls, name) for cls in classes for name in ("get", "__getitem__", "__contains__")}

    def noting(original):
        def method(self, name, *args):
            asked.add(name)
            return original(self, name, *args)

        return method

    try:
        for (cls, name), original in saved.items():
            setattr(cls, name, noting(original))
        yield asked
    finally:
        for (cls, name), original in saved.items():
            setattr(cls, name, original)
