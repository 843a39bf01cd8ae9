"""Load cards/concepts.toml (and the site overlay's extra local codes) into a ConceptIndex.

Everything is checked at start-up: an unknown key, an unknown code system, a bad value
kind, a unit that cannot be read, an overlay naming a concept that does not exist...
raises ConfigError with the file and the place, so a mistake never reaches a hook call.
The overlay can only ADD codes to existing concepts (and new code systems); it cannot
remove or change the default codes.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

from cds_service import toml_checks
from cds_service.config import ConfigError
from cds_service.terminology import units
from cds_service.terminology.concept_index import (
    ICD10_FORMAT,
    KINDS,
    VALUE_KINDS,
    Answer,
    CodeSystem,
    Concept,
    ConceptCode,
    ConceptIndex,
    ValueSpec,
)

CONCEPTS_FILE = "concepts.toml"
_ID = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_URI = re.compile(r"(https?://[^\s]+|urn:(oid|uuid):[^\s]+)")

_TOP_KEYS = {"code_systems", "concepts"}
_SYSTEM_KEYS = {"uri", "name", "aliases", "code_format", "local"}
_CONCEPT_KEYS = {"label", "kind", "codes", "text", "value", "unit", "range", "answers"}
_CODE_KEYS = {"system", "code", "display", "match", "checked"}
_ANSWER_KEYS = {"value", "label", "codes", "text"}
_OVERLAY_CONCEPT_KEYS = {"codes"}


def load_concepts(cards_dir: Path, overlay: dict | None = None) -> ConceptIndex:
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


def concepts_from_data(data: dict, overlay: dict | None = None, source: str = CONCEPTS_FILE) -> ConceptIndex:
    _keys(data, _TOP_KEYS, source, required={"code_systems", "concepts"})
    systems = _systems(_table(data["code_systems"], f"{source} [code_systems]"), source)
    concepts_data = _table(data["concepts"], f"{source} [concepts]")
    if not concepts_data:
        raise ConfigError(f"{source}: [concepts] is empty")
    concepts: dict[str, Concept] = {}
    for concept_id, entry in concepts_data.items():
        concepts[concept_id] = _concept(concept_id, entry, systems, source)

    if overlay is not None:
        systems, concepts = _apply_overlay(overlay, systems, concepts)
    return ConceptIndex(concepts, systems)


# -- code systems -------------------------------------------------------------------------
def _systems(table: dict, source: str, existing: dict[str, CodeSystem] | None = None) -> dict[str, CodeSystem]:
    systems = dict(existing or {})
    seen_uris = {uri: s.alias for s in systems.values() for uri in (s.uri, *s.aliases)}
    for alias, entry in table.items():
        where = f"{source} [code_systems.{alias}]"
        if not _ALIAS.fullmatch(alias):
            raise ConfigError(f"{where}: a code system key is lower-case letters, digits, '_' or '-'")
        if alias in systems:
            raise ConfigError(f"{where}: code system '{alias}' is already defined")
        entry = _table(entry, where)
        _keys(entry, _SYSTEM_KEYS, where, required={"uri", "name"})
        uri = _uri(entry["uri"], f"{where} uri")
        aliases = tuple(_uri(a, f"{where} aliases") for a in _list(entry.get("aliases", []), f"{where} aliases"))
        code_format = entry.get("code_format")
        if code_format is not None and code_format != ICD10_FORMAT:
            raise ConfigError(f'{where}: code_format must be "{ICD10_FORMAT}" (or absent)')
        local = entry.get("local", False)
        if not isinstance(local, bool):
            raise ConfigError(f"{where}: local must be true or false")
        for u in (uri, *aliases):
            if u in seen_uris:
                raise ConfigError(f"{where}: URI {u} is already used by code system '{seen_uris[u]}'")
            seen_uris[u] = alias
        systems[alias] = CodeSystem(
            alias=alias,
            uri=uri,
            name=_text(entry["name"], f"{where} name"),
            aliases=aliases,
            code_format=code_format,
            local=local,
        )
    if sum(1 for s in systems.values() if s.local) > 1:
        raise ConfigError(f"{source}: only one code system can be the project's local one")
    return systems


def _system_uri(value: object, systems: dict[str, CodeSystem], where: str) -> str:
    """A code's `system`: a key of [code_systems] or an absolute URI."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: system must be a code system key or an absolute URI")
    if value in systems:
        return systems[value].uri
    if _URI.fullmatch(value):
        for s in systems.values():
            if value in s.aliases:
                return s.uri
        return value
    known = ", ".join(sorted(systems))
    raise ConfigError(f"{where}: unknown code system '{value}' (use one of {known} or an absolute URI)")


def _code_format(uri: str, systems: dict[str, CodeSystem]) -> str | None:
    for s in systems.values():
        if s.uri == uri:
            return s.code_format
    return None


def _is_local(uri: str, systems: dict[str, CodeSystem]) -> bool:
    return any(s.local and s.uri == uri for s in systems.values())


# -- concepts ------------------------------------------------------------------------------
def _concept(concept_id: str, entry: object, systems: dict[str, CodeSystem], source: str) -> Concept:
    where = f"{source} [concepts.{concept_id}]"
    if not _ID.fullmatch(concept_id):
        raise ConfigError(f"{where}: a concept id is lower-case letters, digits and '_'")
    entry = _table(entry, where)
    _keys(entry, _CONCEPT_KEYS, where, required={"label", "kind", "codes"})
    kind = entry["kind"]
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    codes = _codes(entry["codes"], systems, where, default_file=True)
    text: tuple[str, ...] = ()
    if "text" in entry:
        if kind != "medication":
            raise ConfigError(f"{where}: text patterns are allowed for medications only")
        text = tuple(_text(t, f"{where} text") for t in _list(entry["text"], f"{where} text"))
        if not text:
            raise ConfigError(f"{where}: text is empty")
    if not codes and not text:
        raise ConfigError(f"{where}: a concept needs at least one code")
    value = None
    if kind == "observation":
        value = _value_spec(entry, systems, where)
    else:
        extra = {"value", "unit", "range", "answers"} & set(entry)
        if extra:
            raise ConfigError(f"{where}: {', '.join(sorted(extra))} apply to observations only")
    return Concept(
        id=concept_id, label=_text(entry["label"], f"{where} label"), kind=kind, codes=codes, text=text, value=value
    )


def _codes(
    raw: object, systems: dict[str, CodeSystem], where: str, default_file: bool, site: bool = False
) -> tuple[ConceptCode, ...]:
    codes: list[ConceptCode] = []
    seen: set[tuple[str, str, bool]] = set()
    for i, item in enumerate(_list(raw, f"{where} codes")):
        at = f"{where} codes[{i}]"
        item = _table(item, at)
        _keys(item, _CODE_KEYS, at, required={"system", "code"})
        uri = _system_uri(item["system"], systems, at)
        code = item["code"]
        if not isinstance(code, str) or not code.strip() or code != code.strip() or len(code) > 128:
            raise ConfigError(f"{at}: code must be a non-empty string without surrounding blanks")
        match = item.get("match", "exact")
        if match not in ("exact", "prefix"):
            raise ConfigError(f'{at}: match must be "exact" or "prefix"')
        if match == "prefix" and _code_format(uri, systems) != ICD10_FORMAT:
            raise ConfigError(f'{at}: match = "prefix" is only for ICD-10 code families')
        display = item.get("display")
        if display is not None:
            display = _text(display, f"{at} display")
        elif default_file:
            raise ConfigError(f"{at}: display is required (the text a reviewer checks the code against)")
        checked = item.get("checked")
        if checked is not None and not isinstance(checked, bool):
            raise ConfigError(f"{at}: checked must be true or false")
        if checked is None and default_file and not _is_local(uri, systems):
            raise ConfigError(f"{at}: checked = true/false is required for a standard code")
        key = (uri, code, match == "prefix")
        if key in seen:
            raise ConfigError(f"{at}: code {code} is listed twice")
        seen.add(key)
        codes.append(
            ConceptCode(system=uri, code=code, display=display, prefix=match == "prefix", checked=checked, site=site)
        )
    return tuple(codes)


def _value_spec(entry: dict, systems: dict[str, CodeSystem], where: str) -> ValueSpec:
    kind = entry.get("value")
    if kind not in VALUE_KINDS:
        raise ConfigError(f"{where}: value must be one of {', '.join(VALUE_KINDS)}")
    unit = entry.get("unit")
    if kind == "quantity":
        if not isinstance(unit, str):
            raise ConfigError(f'{where}: a quantity needs its canonical UCUM unit (unit = "min")')
        try:
            units.parse(unit)
        except units.UnitError:
            raise ConfigError(f"{where}: unit '{unit}' is not a UCUM unit this service can convert") from None
    elif unit is not None:
        raise ConfigError(f'{where}: unit applies to value = "quantity" only')
    low = high = None
    if kind in ("quantity", "ordinal", "count"):
        if "range" not in entry:
            raise ConfigError(f'{where}: range = [low, high] is required for value = "{kind}"')
        low, high = _range(entry["range"], where, integral=kind != "quantity")
    elif "range" in entry:
        raise ConfigError(f'{where}: range does not apply to value = "{kind}"')
    answers: tuple[Answer, ...] = ()
    if kind in ("coded", "boolean"):
        answers = _answers(entry.get("answers"), kind, systems, where)
    elif "answers" in entry:
        raise ConfigError(f"{where}: answers apply to coded and boolean values only")
    return ValueSpec(kind=kind, unit=unit, low=low, high=high, answers=answers)


def _range(raw: object, where: str, integral: bool) -> tuple[float, float]:
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw)
    ):
        raise ConfigError(f"{where}: range must be [low, high] (numbers)")
    low, high = float(raw[0]), float(raw[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"{where}: range must have low <= high")
    if integral and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}: range of a grade or count must be whole numbers")
    return low, high


def _answers(raw: object, kind: str, systems: dict[str, CodeSystem], where: str) -> tuple[Answer, ...]:
    if raw is None:
        if kind == "boolean":
            return ()  # valueBoolean only
        raise ConfigError(f"{where}: a coded value needs its answers")
    answers: list[Answer] = []
    values: set = set()
    for i, item in enumerate(_list(raw, f"{where} answers")):
        at = f"{where} answers[{i}]"
        item = _table(item, at)
        _keys(item, _ANSWER_KEYS, at, required={"value"})
        value = item["value"]
        if kind == "boolean" and not isinstance(value, bool):
            raise ConfigError(f"{at}: value must be true or false")
        if kind == "coded" and (not isinstance(value, str) or not _ID.fullmatch(value)):
            raise ConfigError(f'{at}: value must be a short lower-case word ("persisted")')
        if value in values:
            raise ConfigError(f"{at}: answer {value!r} is listed twice")
        values.add(value)
        codes = _codes(item.get("codes", []), systems, at, default_file=True)
        texts = tuple(_text(t, f"{at} text") for t in _list(item.get("text", []), f"{at} text"))
        if not codes and not texts:
            raise ConfigError(f"{at}: an answer needs codes or text")
        label = _text(item.get("label", str(value)), f"{at} label")
        answers.append(Answer(value=value, label=label, codes=codes, texts=texts))
    if not answers:
        raise ConfigError(f"{where}: answers is empty")
    return tuple(answers)


# -- the site overlay ----------------------------------------------------------------------
def _apply_overlay(
    overlay: object, systems: dict[str, CodeSystem], concepts: dict[str, Concept]
) -> tuple[dict[str, CodeSystem], dict[str, Concept]]:
    source = "site overlay"
    if not isinstance(overlay, dict):
        raise ConfigError(f"{source}: not a TOML table")
    if "code_systems" in overlay:
        systems = _systems(_table(overlay["code_systems"], f"{source} [code_systems]"), source, existing=systems)
    extra = _table(overlay.get("concepts", {}), f"{source} [concepts]")
    concepts = dict(concepts)
    for concept_id, entry in extra.items():
        where = f"{source} [concepts.{concept_id}]"
        if concept_id not in concepts:
            raise ConfigError(
                f"{where}: no concept with this id in {CONCEPTS_FILE} (a site can add codes to existing concepts only)"
            )
        entry = _table(entry, where)
        _keys(entry, _OVERLAY_CONCEPT_KEYS, where, required={"codes"})
        added = _codes(entry["codes"], systems, where, default_file=False, site=True)
        base = concepts[concept_id]
        existing = {(c.system, c.code, c.prefix) for c in base.codes}
        new = tuple(c for c in added if (c.system, c.code, c.prefix) not in existing)
        concepts[concept_id] = Concept(
            id=base.id, label=base.label, kind=base.kind, codes=base.codes + new, text=base.text, value=base.value
        )
    return systems, concepts


# -- small checks ----------------------------------------------------------------------------
def _table(value: object, where: str) -> dict:
    return toml_checks.table(value, where, ConfigError)


def _list(value: object, where: str) -> list:
    return toml_checks.listing(value, where, ConfigError)


def _keys(entry: dict, allowed: set[str], where: str, required: set[str] = frozenset()) -> None:
    toml_checks.known_keys(entry, allowed, where, required, ConfigError)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a non-empty string")
    return value.strip()


def _uri(value: object, where: str) -> str:
    if not isinstance(value, str) or not _URI.fullmatch(value):
        raise ConfigError(f"{where}: must be an absolute URI (http(s)://... or urn:oid:/urn:uuid:)")
    return value
