"""Decoding hook requests and FHIR answers once, keeping only the elements the record reads.

A hook call's body is mostly the prefetch: hundreds of FHIR resources of which the record
reads a few elements each. `Decoding` decodes the JSON bytes with msgspec straight into
Structs that declare only those elements (`clinical.fhir_elements.declared_elements()`, handed
in by startup: this layer does not import the clinical one), one Struct per resource type;
every other element is skipped by msgspec's C parser and never becomes a Python object.
Observations that name none of the codes the record reads them by are dropped from their
Bundle (`Decoding._sift`). A declared element is typed `Any`,
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
from typing import Any, Union

import msgspec
import msgspec.structs
from msgspec import UNSET

from cds_service.fhir.resource_types import RESOURCE_TYPES

# The fields of the hook request itself (CDS Hooks 2.0 HTTP request), all checked by
# http/hook_request.py after decoding (so its 400s keep their field and reason).
HOOK_REQUEST_FIELDS = ("hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "extension")
# Bundle and entry elements read by prefetch paging (fhir/client.py, fhir/prefetch.py).
BUNDLE_ELEMENTS = ("type", "link", "meta", "total")


class _Element:
    """The read side of a JSON object, for a decoded Struct (UNSET = not sent)."""

    __struct_fields__: tuple[str, ...]  # set by msgspec on the Struct these methods are copied to
    _leading: tuple[str, ...] = ()  # ("resourceType",) on a resource: its tag, not a field

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
        # astuple reads every field in C: cheaper than one getattr per declared field.
        values = msgspec.structs.astuple(self)  # type: ignore[arg-type]  # self is a Struct
        return iter([*self._leading, *(n for n, v in zip(self.__struct_fields__, values) if v is not UNSET)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def keys(self) -> list[str]:
        return list(self)

    def items(self) -> list[tuple[str, object]]:
        return [(name, self[name]) for name in self]

    def values(self) -> list[object]:
        return [self[name] for name in self]


_ELEMENT_METHODS = ("get", "__getitem__", "__contains__", "__iter__", "__len__", "keys", "items", "values")


def _struct(name: str, fields: Iterable[tuple[str, Any]], tag: str | None = None) -> type:
    """A Struct of optional fields (UNSET when not sent) that reads like a JSON object; with
    `tag`, a resource of that type (its resourceType is the Struct's tag, read like an element).

    gc=False: the decoded values hold no reference cycles (JSON cannot), so the collector need
    not track the Structs; a large prefetch otherwise makes it walk them several times a call."""
    namespace: dict[str, Any] = {
        "json_object": True,
        "_leading": (),
        **{m: getattr(_Element, m) for m in _ELEMENT_METHODS},
    }
    if tag is not None:
        namespace.update(resourceType=tag, _leading=("resourceType",))
    cls = msgspec.defstruct(
        name,
        [(field, kind, UNSET) for field, kind in fields],
        namespace=namespace,
        omit_defaults=True,
        gc=False,
        tag_field="resourceType" if tag is not None else None,
        tag=tag if tag is not None else None,
    )
    Mapping.register(cls)
    return cls


class Decoding:
    """The decoders of one service: built once at startup from the elements it reads.

    A resource decodes into the Struct of its type (msgspec's tagged union on resourceType):
    a type the record reads (`read_types`; all when not given) keeps the declared elements,
    any other type keeps none, so its whole body is skipped in C. A resourceType that is not a
    FHIR resource type (fhir/resource_types.py) fails the typed decode, and the body is then
    parsed generically, as any body of an unexpected shape is."""

    def __init__(
        self,
        elements: Iterable[str],
        read_types: Iterable[str] | None = None,
        observation_codes: Iterable[str] | None = None,
        line_keys: Iterable[str] = (),
    ) -> None:
        names = sorted({"id", *elements} - {"resourceType", "entry", *BUNDLE_ELEMENTS})
        self.elements = frozenset(names) | {"resourceType", "entry", *BUNDLE_ELEMENTS}
        read = RESOURCE_TYPES if read_types is None else frozenset(read_types)
        own: list[tuple[str, Any]] = [(n, Any) for n in names]
        bundle = [("id", Any), *((n, Any) for n in BUNDLE_ELEMENTS)]
        # Observations named by code only: their code and components stay raw JSON text until
        # the Bundle they came in has been sifted (`_sift`).
        self._named = frozenset(observation_codes) if observation_codes is not None else None
        lazy = frozenset(_SIFTED) if self._named is not None else frozenset()

        def fields(kind: str) -> list[tuple[str, Any]]:
            if kind not in read:
                return []
            if kind == "Observation":
                return [*((n, msgspec.Raw if n in lazy else k) for n, k in own), ("entry", Any)]
            return [*own, ("entry", Any)]

        # An entry's resource: the elements read, and its own `entry` (a nested Bundle, or
        # List.entry) kept as sent.
        resources = [_struct(kind, fields(kind), tag=kind) for kind in sorted(RESOURCE_TYPES - {"Bundle"})]
        self._observation = next(cls for cls in resources if cls.__name__ == "Observation")
        inner_bundle = _struct("Bundle", [*bundle, ("entry", Any)], tag="Bundle")
        self.Resource: Any = Union[(*resources, inner_bundle)]
        self.Entry = _struct("Entry", [("fullUrl", Any), ("resource", self.Resource)])
        # What a prefetch key or a FHIR answer holds: a resource, or a Bundle of entries with
        # what paging reads of it. (GenericAlias(list, X) is list[X], built at run time.)
        top_bundle = _struct("Bundle", [*bundle, ("entry", GenericAlias(list, self.Entry))], tag="Bundle")
        self._top_bundle = top_bundle
        self.Top: Any = Union[(*resources, top_bundle)]
        self.classes: tuple[type, ...] = (*resources, inner_bundle, top_bundle, self.Entry)
        body = _struct(
            "HookRequestBody",
            [*((n, Any) for n in HOOK_REQUEST_FIELDS), ("prefetch", GenericAlias(dict, (str, self.Top | None)) | None)],
        )
        self._hook_request: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)
        self._answer: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self.Top)
        # One resource read on its own: the elements read, and the keys it is filed by.
        self.line_keys = tuple(sorted(set(line_keys) - {*names, "entry"}))
        # (Untagged: resourceType is a field, and what is stored of it decodes into a Resource.)
        self.Line = _struct("Line", [("resourceType", Any), *own, *((k, Any) for k in self.line_keys)])
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
        body = {name: getattr(decoded, name) for name in decoded}
        if self._named is not None and isinstance(body.get("prefetch"), dict):
            for value in body["prefetch"].values():
                self._sift(value)
        return body

    def answer(self, data: bytes) -> Mapping[str, Any] | None:
        """A FHIR server's answer (a resource or a Bundle) decoded; None when it is not of
        that shape (the caller parses it generically)."""
        if not _is_utf8(data):
            return None
        try:
            answer: Mapping[str, Any] = self._answer.decode(data)  # a resource Struct (a registered Mapping)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        if self._named is not None:
            self._sift(answer)
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

    def _sift(self, value: object) -> None:
        """Drop from a Bundle the Observations that name none of the codes the record reads
        Observations by (what a narrowed prefetch search would not have returned: the record
        would match nothing in them), and decode the raw code and components of those kept.

        The test reads only the `code` of each coding of the code and of the components, and
        keeps the Observation whenever it cannot tell (text of another shape): no Observation
        the record could match is dropped."""
        named = self._named
        observation = self._observation
        assert named is not None
        if type(value) is observation:
            _decode_sifted(value)
            return
        if type(value) is not self._top_bundle:
            return
        entries = value.entry  # type: ignore[attr-defined]
        if type(entries) is not list:
            return
        kept = []
        for entry in entries:
            resource = entry.resource
            if type(resource) is observation:
                if not _names_one(resource, named):
                    continue
                _decode_sifted(resource)
            kept.append(entry)
        if len(kept) != len(entries):
            value.entry = kept  # type: ignore[attr-defined]


class _Coding(msgspec.Struct):
    code: Any = None


class _Codeable(msgspec.Struct):
    coding: list[_Coding] = []


class _Component(msgspec.Struct):
    code: _Codeable | None = None


_CODEABLE = msgspec.json.Decoder(_Codeable)
_COMPONENTS = msgspec.json.Decoder(list[_Component])


def _names_one(observation: Any, named: frozenset[str]) -> bool:
    """Whether the Observation's code or a component's code has a coding whose code is one of
    `named`; True when its code or components are not of the shape that test reads."""
    code, components = observation.code, observation.component
    try:
        if type(code) is msgspec.Raw:
            for coding in _CODEABLE.decode(code).coding:
                if type(coding.code) is str and coding.code in named:
                    return True
        if type(components) is msgspec.Raw:
            for component in _COMPONENTS.decode(components):
                if component.code is not None:
                    for coding in component.code.coding:
                        if type(coding.code) is str and coding.code in named:
                            return True
    except (msgspec.DecodeError, msgspec.ValidationError):
        return True  # not the shape read here: kept, the record judges it
    return False


# The Observation elements a sift reads as raw JSON text, decoded once it keeps the resource.
_SIFTED = ("code", "component")


def _decode_sifted(resource: object) -> None:
    for name in _SIFTED:
        raw = getattr(resource, name, UNSET)
        if type(raw) is msgspec.Raw:
            setattr(resource, name, msgspec.json.decode(raw))


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
