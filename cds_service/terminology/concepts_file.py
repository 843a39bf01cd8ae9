"""Load cards/concepts.toml (and the site overlay's extra local codes) into a ConceptIndex.

The file format is declared once, by the pydantic models below (`ConceptsFile`,
`SiteConcepts`); its JSON Schema is published at cards/schema/concepts.schema.json
(`python -m cds_service.terminology.concepts_file` prints it). Everything is checked at
start-up: an unknown key, an unknown code system, a bad value kind, a unit that cannot be
read, a code naming a value set the concept does not declare, an overlay naming a concept
that does not exist... raises ConfigError with the file, the place (concept id, field) and
why, so a mistake never reaches a hook call. The overlay can only ADD codes to existing
concepts (and new code systems); it cannot remove or change the default codes.

Value sets carry their provenance: a concept may list `[[concepts.<id>.value_sets]]`
(name, oid or url, version, expansion_date, source), and each code read from one names it
(`value_set = "<oid or url>"`).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from cds_service.config import ConfigError
from cds_service.terminology import units
from cds_service.terminology.concept_index import (
    ICD10_FORMAT,
    VALUE_KINDS,
    Answer,
    CodeSystem,
    Concept,
    ConceptCode,
    ConceptIndex,
    ValueSet,
    ValueSpec,
)

CONCEPTS_FILE = "concepts.toml"
SCHEMA_FILE = Path("schema") / "concepts.schema.json"
_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_URI = re.compile(r"(https?://[^\s]+|urn:(oid|uuid):[^\s]+)")
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")

# Validation context keys (model_validate(..., context=...)).
_SYSTEMS = "systems"  # alias -> CodeSystem, filled while the file's code systems are read
_DEFAULT_FILE = "default_file"  # True for cards/concepts.toml, False for a site overlay
_CONCEPT_IDS = "concept_ids"  # the overlay: ids of the default file's concepts

NonEmpty = Annotated[str, Field(min_length=1, pattern=r"\S")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# ----------------------------------------------------------------------------- code systems
class CodeSystemEntry(_Model):
    """[code_systems.<key>]: a code system the codes name by its key."""

    uri: str = Field(description="canonical URI (http(s)://..., urn:oid:, urn:uuid:)")
    name: NonEmpty = Field(description="short name shown on cards")
    aliases: list[str] = Field(default_factory=list, description="other URIs meaning the same system (OIDs)")
    code_format: Literal["icd-10"] | None = Field(None, description='"icd-10": dots and case ignored; families')
    local: StrictBool = Field(False, description="the project's own CodeSystem (its codes need no `checked`)")

    @field_validator("uri")
    @classmethod
    def _absolute_uri(cls, value: str) -> str:
        return _uri(value)

    @field_validator("aliases")
    @classmethod
    def _absolute_uris(cls, value: list[str]) -> list[str]:
        return [_uri(v) for v in value]


def _uri(value: str) -> str:
    if not _URI.fullmatch(value):
        raise ValueError("must be an absolute URI (http(s)://... or urn:oid:/urn:uuid:)")
    return value


def _read_systems(table: dict[str, CodeSystemEntry], info: ValidationInfo) -> dict[str, CodeSystemEntry]:
    """Check the keys and URIs, and keep the systems in the context for the codes."""
    context = info.context if isinstance(info.context, dict) else {}
    systems: dict[str, CodeSystem] = dict(context.get(_SYSTEMS) or {})
    seen = {uri: s.alias for s in systems.values() for uri in (s.uri, *s.aliases)}
    for alias, entry in table.items():
        if not _ALIAS.fullmatch(alias):
            raise ValueError(f"[code_systems.{alias}]: a code system key is lower-case letters, digits, '_' or '-'")
        if alias in systems:
            raise ValueError(f"[code_systems.{alias}]: code system '{alias}' is already defined")
        for uri in (entry.uri, *entry.aliases):
            if uri in seen:
                raise ValueError(f"[code_systems.{alias}]: URI {uri} is already used by code system '{seen[uri]}'")
            seen[uri] = alias
        systems[alias] = CodeSystem(
            alias=alias,
            uri=entry.uri,
            name=entry.name,
            aliases=tuple(entry.aliases),
            code_format=entry.code_format,
            local=entry.local,
        )
    if sum(1 for s in systems.values() if s.local) > 1:
        raise ValueError("only one code system can be the project's local one")
    context[_SYSTEMS] = systems
    return table


# ----------------------------------------------------------------------------- codes
class CodeEntry(_Model):
    """One code of a concept (or of an answer)."""

    system: str = Field(description="a key of [code_systems] or an absolute URI")
    code: str = Field(description="the code as the code system writes it")
    display: str | None = Field(None, description="the text a reviewer checks the code against")
    match: Literal["exact", "prefix"] = Field("exact", description='"prefix": an ICD-10 family')
    checked: StrictBool | None = Field(
        None, description="description confirmed against an official code release (standard codes)"
    )
    value_set: str | None = Field(
        None, description="the oid (or url) of the concept's value set this code was read from"
    )

    @field_validator("code", mode="before")
    @classmethod
    def _clean_code(cls, value: Any) -> Any:
        if isinstance(value, str) and (not value.strip() or value != value.strip() or len(value) > 128):
            raise ValueError("code must be a non-empty string without surrounding blanks")
        return value

    @field_validator("display")
    @classmethod
    def _display_text(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("display must be a non-empty string")
        return value

    @model_validator(mode="after")
    def _in_context(self, info: ValidationInfo) -> CodeEntry:
        context = info.context if isinstance(info.context, dict) else {}
        systems: dict[str, CodeSystem] = context.get(_SYSTEMS) or {}
        default_file = context.get(_DEFAULT_FILE, True)
        uri = system_uri(self.system, systems)
        system = next((s for s in systems.values() if s.uri == uri), None)
        if self.match == "prefix" and (system is None or system.code_format != ICD10_FORMAT):
            raise ValueError('match = "prefix" is only for ICD-10 code families')
        if default_file and self.display is None:
            raise ValueError("display is required (the text a reviewer checks the code against)")
        if default_file and self.checked is None and not (system is not None and system.local):
            raise ValueError("checked = true/false is required for a standard code")
        return self


def system_uri(value: str, systems: dict[str, CodeSystem]) -> str:
    """A code's `system`: a key of [code_systems] or an absolute URI (an alias counts as its system)."""
    if value in systems:
        return systems[value].uri
    if _URI.fullmatch(value):
        for s in systems.values():
            if value in s.aliases:
                return s.uri
        return value
    known = ", ".join(sorted(systems))
    raise ValueError(f"unknown code system '{value}' (use one of {known} or an absolute URI)")


# ----------------------------------------------------------------------------- value sets
class ValueSetEntry(_Model):
    """[[concepts.<id>.value_sets]]: a published value set some of the concept's codes were read from."""

    name: NonEmpty = Field(description='the value set\'s name ("Essential Hypertension")')
    oid: str | None = Field(None, description="its OID (2.16.840.1...)")
    url: str | None = Field(None, description="its canonical URL")
    version: NonEmpty = Field(description="the value set version the expansion is of")
    expansion_date: date = Field(description="the date of the expansion the codes were read from")
    source: NonEmpty = Field(description="where the expansion was read (repository and path, or page)")
    note: str | None = Field(None, description="what was taken from it and what was left out, and why")

    @field_validator("oid")
    @classmethod
    def _oid(cls, value: str | None) -> str | None:
        if value is not None and not _OID.fullmatch(value):
            raise ValueError("oid must be dotted digits (2.16.840.1.113883...)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _uri(value)

    @model_validator(mode="after")
    def _named(self) -> ValueSetEntry:
        if self.oid is None and self.url is None:
            raise ValueError("a value set needs its oid or its url")
        return self


# ----------------------------------------------------------------------------- concepts
class AnswerEntry(_Model):
    """One allowed answer of a coded or boolean observation."""

    value: StrictBool | str = Field(description='true / false (boolean) or a short word ("persisted")')
    label: str | None = None
    codes: list[CodeEntry] = Field(default_factory=list)
    text: list[NonEmpty] = Field(default_factory=list, description="whole-text matches, case-insensitive")

    @model_validator(mode="after")
    def _something_names_it(self) -> AnswerEntry:
        if not self.codes and not self.text:
            raise ValueError("an answer needs codes or text")
        return self


class ConceptEntry(_Model):
    """[concepts.<id>]: one clinical concept, the codes that name it and how its value is read."""

    label: NonEmpty
    kind: Literal["condition", "procedure", "medication", "observation", "body_site"]
    codes: list[CodeEntry]
    text: list[NonEmpty] | None = Field(
        None,
        description="free-text phrases (medications and body sites only) matched in CodeableConcept.text and displays",
    )
    value_sets: list[ValueSetEntry] = Field(default_factory=list, description="provenance of the codes")
    value: Literal["quantity", "ordinal", "count", "coded", "boolean"] | None = None
    unit: str | None = Field(None, description="canonical UCUM unit (quantity)")
    range: list[float] | None = Field(None, description="[low, high], inclusive, in `unit`")
    answers: list[AnswerEntry] | None = None
    intraoperative: StrictBool = Field(
        False,
        description="taken during a procedure: a value on the procedure's own day belongs to it even "
        "without a time of day (observations only)",
    )

    @field_validator("range", mode="before")
    @classmethod
    def _range_shape(cls, value: Any) -> Any:
        if value is not None and (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
        ):
            raise ValueError("range must be [low, high] (numbers)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ConceptEntry:
        if self.text is not None:
            if self.kind not in ("medication", "body_site"):
                raise ValueError("text patterns are allowed for medications and body sites only")
            if not self.text:
                raise ValueError("text is empty")
        if not self.codes and not self.text:
            raise ValueError("a concept needs at least one code")
        seen: set[tuple[str, str, str]] = set()
        for code in self.codes:
            key = (code.system, code.code, code.match)
            if key in seen:
                raise ValueError(f"code {code.code} is listed twice")
            seen.add(key)
        names = {v.oid for v in self.value_sets} | {v.url for v in self.value_sets}
        for code in self.codes:
            if code.value_set is not None and code.value_set not in names:
                raise ValueError(f"code {code.code} names value set {code.value_set}, which value_sets does not list")
        if self.kind == "observation":
            self._value_spec()
        else:
            extra = [k for k in ("value", "unit", "range", "answers") if getattr(self, k) is not None]
            if self.intraoperative:
                extra.append("intraoperative")
            if extra:
                raise ValueError(f"{', '.join(extra)} apply to observations only")
        return self

    def _value_spec(self) -> None:
        kind = self.value
        if kind is None:
            raise ValueError(f"value must be one of {', '.join(VALUE_KINDS)}")
        if kind == "quantity":
            if self.unit is None:
                raise ValueError('a quantity needs its canonical UCUM unit (unit = "min")')
            try:
                units.parse(self.unit)
            except units.UnitError:
                raise ValueError(f"unit '{self.unit}' is not a UCUM unit this service can convert") from None
        elif self.unit is not None:
            raise ValueError('unit applies to value = "quantity" only')
        if kind in ("quantity", "ordinal", "count"):
            if self.range is None:
                raise ValueError(f'range = [low, high] is required for value = "{kind}"')
            low, high = self.range
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise ValueError("range must have low <= high")
            if kind != "quantity" and not (float(low).is_integer() and float(high).is_integer()):
                raise ValueError("range of a grade or count must be whole numbers")
        elif self.range is not None:
            raise ValueError(f'range does not apply to value = "{kind}"')
        if kind in ("coded", "boolean"):
            if self.answers is None:
                if kind == "coded":
                    raise ValueError("a coded value needs its answers")
                return
            if not self.answers:
                raise ValueError("answers is empty")
            values: set[object] = set()
            for answer in self.answers:
                if kind == "boolean" and not isinstance(answer.value, bool):
                    raise ValueError("an answer's value must be true or false")
                if kind == "coded" and (not isinstance(answer.value, str) or not _ID.fullmatch(answer.value)):
                    raise ValueError('an answer\'s value must be a short lower-case word ("persisted")')
                if answer.value in values:
                    raise ValueError(f"answer {answer.value!r} is listed twice")
                values.add(answer.value)
        elif self.answers is not None:
            raise ValueError("answers apply to coded and boolean values only")


def _concept_ids(value: Any) -> Any:
    if isinstance(value, dict):
        for concept_id in value:
            if not isinstance(concept_id, str) or not _ID.fullmatch(concept_id):
                raise ValueError(f"[concepts.{concept_id}]: a concept id is lower-case letters, digits and '_'")
    return value


class ConceptsFile(_Model):
    """cards/concepts.toml: the code systems, then the concepts (value sets) the cards name by id."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        json_schema_extra={"$id": "https://hfs-cds.example.org/schema/concepts.schema.json"},
        title="HFS-CDS concepts file (cards/concepts.toml)",
    )

    code_systems: dict[str, CodeSystemEntry]  # validated first: the codes name these
    concepts: Annotated[dict[str, ConceptEntry], Field(min_length=1)]

    _systems = field_validator("code_systems")(_read_systems)
    _ids = field_validator("concepts", mode="before")(_concept_ids)


class SiteConceptCodes(_Model):
    """[concepts.<id>] of a site overlay: only more codes, and the site's value set expansions
    they were read from (a site extends a value set with its own expansion this way)."""

    codes: list[CodeEntry]
    value_sets: list[ValueSetEntry] = Field(default_factory=list)


class SiteConcepts(_Model):
    """The concepts part of a site overlay: new code systems, and codes added to existing concepts."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    code_systems: dict[str, CodeSystemEntry] = Field(default_factory=dict)
    concepts: dict[str, SiteConceptCodes] = Field(default_factory=dict)

    _systems = field_validator("code_systems")(_read_systems)

    @field_validator("concepts", mode="before")
    @classmethod
    def _existing(cls, value: Any, info: ValidationInfo) -> Any:
        known = (info.context or {}).get(_CONCEPT_IDS, ())
        if isinstance(value, dict):
            for concept_id in value:
                if concept_id not in known:
                    raise ValueError(
                        f"[concepts.{concept_id}]: no concept with this id in {CONCEPTS_FILE} "
                        "(a site can add codes to existing concepts only)"
                    )
        return value


# ----------------------------------------------------------------------------- loading
def load_concepts(cards_dir: Path, overlay: dict[str, Any] | None = None) -> ConceptIndex:
    """cards_dir/concepts.toml plus the overlay's `[concepts.<id>] codes = [...]`."""
    path = Path(cards_dir) / CONCEPTS_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the concepts file ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib also reports a concept id defined twice here ("Cannot declare ... twice").
        raise ConfigError(f"{path}: not valid TOML (a concept defined twice is reported this way): {exc}") from exc
    return concepts_from_data(data, overlay, source=str(path))


def concepts_from_data(
    data: dict[str, Any], overlay: dict[str, Any] | None = None, source: str = CONCEPTS_FILE
) -> ConceptIndex:
    context: dict[str, Any] = {_DEFAULT_FILE: True}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: not a TOML table")
    try:
        parsed = ConceptsFile.model_validate(data, context=context)
    except ValidationError as exc:
        raise _config_error(exc, source) from None
    systems: dict[str, CodeSystem] = context[_SYSTEMS]
    concepts = {cid: _concept(cid, entry, systems) for cid, entry in parsed.concepts.items()}
    if overlay is not None:
        systems, concepts = _apply_overlay(overlay, systems, concepts)
    return ConceptIndex(concepts, systems)


def _apply_overlay(
    overlay: object, systems: dict[str, CodeSystem], concepts: dict[str, Concept]
) -> tuple[dict[str, CodeSystem], dict[str, Concept]]:
    source = "site overlay"
    if not isinstance(overlay, dict):
        raise ConfigError(f"{source}: not a TOML table")
    context: dict[str, Any] = {_SYSTEMS: dict(systems), _DEFAULT_FILE: False, _CONCEPT_IDS: set(concepts)}
    try:
        parsed = SiteConcepts.model_validate(overlay, context=context)
    except ValidationError as exc:
        raise _config_error(exc, source) from None
    systems = context[_SYSTEMS]
    concepts = dict(concepts)
    for concept_id, entry in parsed.concepts.items():
        base = concepts[concept_id]
        value_sets = base.value_sets + tuple(_value_set(v) for v in entry.value_sets)
        names = {v.oid for v in value_sets} | {v.url for v in value_sets}
        for code in entry.codes:
            if code.value_set is not None and code.value_set not in names:
                raise ConfigError(
                    f"{source} [concepts.{concept_id}] codes: code {code.code} names value set "
                    f"{code.value_set}, which neither value_sets nor {CONCEPTS_FILE} lists"
                )
        existing = {(c.system, c.code, c.prefix) for c in base.codes}
        added = tuple(_code(c, systems, site=True) for c in entry.codes)
        new = tuple(dict.fromkeys(c for c in added if (c.system, c.code, c.prefix) not in existing))
        concepts[concept_id] = Concept(
            id=base.id,
            label=base.label,
            kind=base.kind,
            codes=base.codes + new,
            text=base.text,
            value=base.value,
            value_sets=value_sets,
            intraoperative=base.intraoperative,
        )
    return systems, concepts


def _concept(concept_id: str, entry: ConceptEntry, systems: dict[str, CodeSystem]) -> Concept:
    value = None
    if entry.kind == "observation":
        low, high = entry.range if entry.range is not None else (None, None)
        answers = tuple(
            Answer(
                value=a.value,
                label=a.label if a.label else str(a.value),
                codes=tuple(_code(c, systems) for c in a.codes),
                texts=tuple(a.text),
            )
            for a in entry.answers or ()
        )
        # ConceptEntry's validator rejects an observation without a value kind.
        value = ValueSpec(kind=cast(str, entry.value), unit=entry.unit, low=low, high=high, answers=answers)
    return Concept(
        id=concept_id,
        label=entry.label,
        kind=entry.kind,
        codes=tuple(_code(c, systems) for c in entry.codes),
        text=tuple(entry.text or ()),
        value=value,
        value_sets=tuple(_value_set(v) for v in entry.value_sets),
        intraoperative=entry.intraoperative,
    )


def _value_set(v: ValueSetEntry) -> ValueSet:
    return ValueSet(
        name=v.name,
        oid=v.oid,
        url=v.url,
        version=v.version,
        expansion_date=v.expansion_date,
        source=v.source,
        note=v.note,
    )


def _code(entry: CodeEntry, systems: dict[str, CodeSystem], site: bool = False) -> ConceptCode:
    return ConceptCode(
        system=system_uri(entry.system, systems),
        code=entry.code,
        display=entry.display,
        prefix=entry.match == "prefix",
        checked=entry.checked,
        site=site,
        value_set=entry.value_set,
    )


# ----------------------------------------------------------------------------- messages
_TYPE_MESSAGES = {
    "extra_forbidden": "unknown key '{key}'",
    "missing": "missing {key}",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "date_type": "must be a date (YYYY-MM-DD)",
    "date_parsing": "must be a date (YYYY-MM-DD)",
    "date_from_datetime_parsing": "must be a date (YYYY-MM-DD)",
    "string_too_short": "must be a non-empty string",
    "string_pattern_mismatch": "must be a non-empty string",
    "too_short": "must not be empty",
}
_HIDDEN = {"function-after", "function-before", "function-wrap", "str", "bool", "dict[str,...]"}


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    """The first problem as "<file> [concepts.<id>] <field>: <why>" (at most three listed)."""
    errors = exc.errors(include_url=False)
    # A broken code system makes every code naming it look wrong too: report the system only.
    systems = [e for e in errors if e.get("loc", ())[:1] == ("code_systems",)]
    lines = [_message(error) for error in (systems or errors)[:3]]
    return ConfigError(f"{source} " + "; ".join(dict.fromkeys(lines)))


def _message(error: ErrorDetails) -> str:
    loc = [part for part in error.get("loc", ()) if not (isinstance(part, str) and part in _HIDDEN)]
    kind = error.get("type", "")
    if kind == "value_error":
        why = str(error.get("ctx", {}).get("error", error.get("msg", "")))
    elif kind == "literal_error":
        why = f"{loc[-1] if loc else 'value'} must be one of {error.get('ctx', {}).get('expected', '')}"
    else:
        template = _TYPE_MESSAGES.get(kind)
        why = template.format(key=loc[-1] if loc else "value") if template else error.get("msg", "not valid")
    why = why.removeprefix("Value error, ")
    if why.startswith("["):  # the validator named its table itself
        return why
    return f"{_place(loc, drop_last=kind in ('extra_forbidden', 'missing'))}: {why}"


def _place(loc: list[int | str], drop_last: bool) -> str:
    parts = list(loc[:-1] if drop_last and loc else loc)
    if len(parts) >= 2 and parts[0] in ("concepts", "code_systems"):
        head = f"[{parts[0]}.{parts[1]}]"
        rest = parts[2:]
    elif parts and parts[0] in ("concepts", "code_systems"):
        head, rest = f"[{parts[0]}]", []
    else:
        head, rest = "", parts
    tail = ""
    for part in rest:
        tail += f"[{part}]" if isinstance(part, int) else f" {part}"
    return (head + tail).strip() or "(top level)"


# ----------------------------------------------------------------------------- JSON Schema
def schema_json() -> str:
    """The JSON Schema of cards/concepts.toml, as published at cards/schema/concepts.schema.json."""
    return json.dumps(ConceptsFile.model_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # .venv/bin/python -m cds_service.terminology.concepts_file > cards/schema/...
    print(schema_json(), end="")
