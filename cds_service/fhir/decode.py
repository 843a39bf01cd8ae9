"""Decoding hook requests and FHIR answers once, keeping only the elements the record reads.

A hook call's body is mostly the prefetch: hundreds of FHIR resources of which the record
reads a few elements each. `Decoding` decodes the JSON bytes with msgspec straight into
Structs that declare only those elements (`clinical.fhir_elements.DECLARED_ELEMENTS`, handed
in by startup: this layer does not import the clinical one); every other element is skipped
by msgspec's C parser and never becomes a Python object. A declared element is typed `Any`,
so an element of the wrong shape never fails the decode: it is decoded as sent, and the
record's own datatype checks make that input unreadable and say so.

The decoded resources read like the JSON objects they came from (`get`, `[...]`, `in`,
iteration over the elements present; `Mapping` for `isinstance`), so the code that reads a
record does not care which path a resource came by. Nested values (a CodeableConcept, a
dosage) are plain JSON values.

Only the shape of the envelope is typed (the body an object, Bundle.entry a list of objects,
an entry's resource an object). Anything else (malformed JSON, an entry that is not an
object, a prefetch value that is a string) fails the typed decode, and the caller falls back
to the generic JSON parser, whose result is judged exactly as before: such input keeps its
400 with field and reason, or is skipped where the reading rules skip it. The fallback is
the rare path; the well-formed body is decoded once.

A resource on its own (a line of a Bulk Data export, `resource`) is decoded the same way
into a `Line`: the elements of a `Resource`, and the elements its reader files it by
(`line_keys`: for `learn`'s staging, the patient it belongs to), which are not part of the
`Resource` (dropped before it is stored, so what is read back decodes into a `Resource`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import GenericAlias
from typing import Any

import msgspec
from msgspec import UNSET

# The fields of the hook request itself (CDS Hooks 2.0 HTTP request), all checked by
# http/hook_request.py after decoding (so its 400s keep their field and reason).
HOOK_REQUEST_FIELDS = ("hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "extension")
# Bundle and entry elements read by prefetch paging (fhir/client.py, fhir/prefetch.py).
BUNDLE_ELEMENTS = ("type", "link", "meta", "total")


class _Element:
    """The read side of a JSON object, for a decoded Struct (UNSET = not sent)."""

    __struct_fields__: tuple[str, ...]  # set by msgspec on the Struct these methods are copied to

    def get(self, name: str, default: object = None) -> object:
        value = getattr(self, name, UNSET)
        return default if value is UNSET else value

    def __getitem__(self, name: str) -> object:
        value = getattr(self, name, UNSET)
        if value is UNSET:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and getattr(self, name, UNSET) is not UNSET

    def __iter__(self) -> Iterator[str]:
        return (name for name in self.__struct_fields__ if getattr(self, name) is not UNSET)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def keys(self) -> list[str]:
        return list(self)

    def items(self) -> list[tuple[str, object]]:
        return [(name, getattr(self, name)) for name in self]

    def values(self) -> list[object]:
        return [getattr(self, name) for name in self]


_ELEMENT_METHODS = ("get", "__getitem__", "__contains__", "__iter__", "__len__", "keys", "items", "values")


def _struct(name: str, fields: Iterable[tuple[str, Any]]) -> type:
    """A Struct of optional fields (UNSET when not sent) that reads like a JSON object."""
    cls = msgspec.defstruct(
        name,
        [(field, kind, UNSET) for field, kind in fields],
        namespace={"json_object": True, **{method: getattr(_Element, method) for method in _ELEMENT_METHODS}},
        omit_defaults=True,
    )
    Mapping.register(cls)
    return cls


class Decoding:
    """The decoders of one service: built once at startup from the elements it reads."""

    def __init__(self, elements: Iterable[str], line_keys: Iterable[str] = ()) -> None:
        names = sorted({"resourceType", "id", *elements} - {"entry", *BUNDLE_ELEMENTS})
        self.elements = frozenset(names) | {"entry", *BUNDLE_ELEMENTS}
        own: list[tuple[str, Any]] = [(n, Any) for n in names]
        # An entry's resource: the elements read, and its own `entry` (a nested Bundle, or
        # List.entry) kept as sent. Bundle.entry: objects with a resource (or none).
        self.Resource = _struct("Resource", [*own, ("entry", Any)])
        self.Entry = _struct("Entry", [("fullUrl", Any), ("resource", self.Resource)])
        # What a prefetch key or a FHIR answer holds: a resource, or a Bundle of entries
        # with what paging reads of it.
        bundle = [(n, Any) for n in BUNDLE_ELEMENTS]
        # (The types are built at run time: GenericAlias(list, X) is list[X].)
        self.Top = _struct("Resource", [*own, *bundle, ("entry", GenericAlias(list, self.Entry))])
        body = _struct(
            "HookRequestBody",
            [*((n, Any) for n in HOOK_REQUEST_FIELDS), ("prefetch", GenericAlias(dict, (str, self.Top | None)) | None)],
        )
        self._hook_request: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)
        self._answer: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self.Top)
        # One resource read on its own: the elements read, and the keys it is filed by.
        self.line_keys = tuple(sorted(set(line_keys) - {*names, "entry"}))
        self.Line = _struct("Line", [*own, *((k, Any) for k in self.line_keys)])
        self._line: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self.Line)

    def hook_request(self, data: bytes) -> dict[str, Any] | None:
        """The hook request as a JSON object whose prefetch values are decoded resources;
        None when the body is not of that shape (the caller parses it generically)."""
        if not _is_utf8(data):
            return None
        try:
            decoded = self._hook_request.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        return {name: getattr(decoded, name) for name in decoded}

    def answer(self, data: bytes) -> Mapping[str, Any] | None:
        """A FHIR server's answer (a resource or a Bundle) decoded; None when it is not of
        that shape (the caller parses it generically)."""
        if not _is_utf8(data):
            return None
        try:
            answer: Mapping[str, Any] = self._answer.decode(data)  # a Top Struct (a registered Mapping)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        return answer

    def resource(self, data: bytes) -> Mapping[str, Any] | None:
        """One resource (a line of a Bulk Data export) decoded into a `Line`; None when it
        is not a JSON object (the caller parses it generically and judges it as before)."""
        if not _is_utf8(data):
            return None
        try:
            line: Mapping[str, Any] = self._line.decode(data)  # a Line Struct (a registered Mapping)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        return line


def _is_utf8(data: bytes) -> bool:
    """JSON text is UTF-8 (RFC 8259). msgspec checks the strings it decodes, not those it
    skips: the whole body is checked here (ASCII, the usual case, at memory speed)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
