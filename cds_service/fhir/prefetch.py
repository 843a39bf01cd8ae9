"""Prefetch: use what the CDS client sent, fetch what it did not (CDS Hooks 2.0).

For every prefetch template of the service:
- sent with a FHIR resource (Resource or Bundle)  -> used as is (no validation here);
- sent as JSON null                               -> "no data", not fetched again;
- sent as an OperationOutcome or anything else    -> treated as not sent, fetched;
- not sent                                        -> fetched from fhirServer with the token.
Keys to fetch are fetched concurrently, all before one deadline. A required key that
cannot be had ends the call with 412; an optional one is recorded in `unavailable`.
Reasons name the key and the resource type, never the URL (it carries the patient id)
nor the token. What the server did (refused, timed out, broke off, answered 404 or not
JSON) is told to the client only when `fhir_server_allowlist` is set: with any fhirServer
allowed, those reasons would tell a client which internal hosts and ports answer HTTP.
The log always has them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from urllib.parse import quote

from cds_service.content.services import PrefetchTemplate, ServiceDefinition
from cds_service.errors import ApiError
from cds_service.fhir.client import FhirAccess, FhirClient, FhirNotFound, FhirUnavailable, is_fhir_resource
from cds_service.fhir.scopes import parse_scope

log = logging.getLogger(__name__)

# Grace after the deadline for clients to report their own (more precise) timeout reason.
_DEADLINE_GRACE_S = 0.05
_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


@dataclass(frozen=True)
class PrefetchResult:
    data: dict[str, dict | None]  # key -> Resource / Bundle, or None = "no data"
    unavailable: dict[str, str]  # key -> safe reason (optional keys that could not be had)
    fetched: tuple[str, ...]  # keys fetched by the service itself
    # key -> safe reason when a fetched search is known to lack pages (data[key] holds
    # the pages that were read, tagged SUBSETTED).
    incomplete: dict[str, str] = field(default_factory=dict)

    @property
    def gaps(self) -> dict[str, str]:
        """Every key whose data is missing or partial, with the reason a card can show."""
        partial = {key: f"only partly retrieved ({reason})" for key, reason in self.incomplete.items()}
        return {**partial, **self.unavailable}


@dataclass
class FhirUse:
    """What one call's prefetch step used (filled in by `resolve`, kept even on a 412):
    the token (`none` sent, `not used`, `used`, `refused` by the FHIR server with 401/403),
    resource types prefetched by the client, fetched by the service, refused (by the
    token's scope or the server), and the prefetch keys the client did not send."""

    token: str = "none"
    prefetched: set[str] = field(default_factory=set)
    fetched: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    missing_keys: list[str] = field(default_factory=list)


class TemplateError(ValueError):
    """A prefetch template cannot be rendered for this request; `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def render_template(template: str, context: dict) -> str:
    """Substitute the CDS Hooks prefetch tokens; values are percent-encoded.

    `{{context.x}}`: first-level context field x whose value is a string, number or
    boolean. `{{userPractitionerId}}`, `{{userPractitionerRoleId}}`, `{{userPatientId}}`,
    `{{userRelatedPersonId}}`: the id part of context.userId when it is of that type.
    A value in the path (a read such as `Patient/{{context.patientId}}`) must be one path
    segment; a value in the query is encoded so it cannot add parameters.
    Raises TemplateError when a token cannot be resolved.
    """
    query_start = template.find("?")
    out: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(template):
        out.append(_literal(template[pos : match.start()]))
        name = match.group(1).strip()
        value = _token_value(name, context)
        in_path = query_start < 0 or match.start() < query_start
        if in_path and (value in (".", "..") or "/" in value or "\\" in value):
            raise TemplateError(f"{name} cannot be used as a resource id")
        out.append(quote(value, safe=""))
        pos = match.end()
    out.append(_literal(template[pos:]))
    return "".join(out)


def _literal(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise TemplateError("the template has a malformed token")
    return text


def _token_value(name: str, context: dict) -> str:
    if name.startswith("context."):
        field_name = name[len("context.") :]
        if not field_name or "." in field_name or field_name not in context:
            raise TemplateError(f"{name} is not a first-level field of the hook context")
        value = context[field_name]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            text = str(value)
        else:
            raise TemplateError(f"{name} is not a primitive value and cannot be used in a query")
        if not text.strip():
            raise TemplateError(f"{name} is empty")
        return text
    if name in _USER_TOKENS:
        wanted = _USER_TOKENS[name]
        user = context.get("userId")
        if not isinstance(user, str) or "/" not in user:
            raise TemplateError(f"{name}: context.userId is missing or not a reference")
        kind, _, ident = user.partition("/")
        if kind != wanted:
            raise TemplateError(f"{name}: the user is not a {wanted}")
        if not ident.strip():
            raise TemplateError(f"{name}: context.userId has no id")
        return ident
    raise TemplateError(f"unknown prefetch token {{{{{name}}}}}")


def _resource_type(template: PrefetchTemplate) -> str:
    return template.query.split("?", 1)[0].split("/", 1)[0] or "unknown"


def _is_read(query: str) -> bool:
    """`Type/id` (no query, no operation) is a read; everything else answers a Bundle."""
    if "?" in query:
        return False
    segments = query.split("/")
    return len(segments) == 2 and not segments[1].startswith(("_", "$"))


def _describe(template: PrefetchTemplate) -> str:
    kind = "read" if _is_read(template.query) else "search"
    return f"{template.key} ({_resource_type(template)} {kind})"


_FIRST_PAGE_ONLY = "the client sent the first page only; the rest could not be read: "
_KIND = {"r": "read", "s": "search"}

# What a client is told instead of the server's behaviour when any fhirServer is allowed.
UNDISCLOSED = "the FHIR server could not be read (the service log says why)"


def _has_next_page(value: dict) -> bool:
    """A searchset Bundle (as the client prefetched it) that says more pages exist."""
    if value.get("resourceType") != "Bundle" or value.get("type", "searchset") != "searchset":
        return False
    links = value.get("link")
    return isinstance(links, list) and any(isinstance(link, dict) and link.get("relation") == "next" for link in links)


def _take_continuation(
    future: Future, key: str, data: dict, incomplete: dict, template: PrefetchTemplate, by_server: set[str]
) -> None:
    """Merge the followed pages of a prefetched searchset, or keep its first page and say so."""
    try:
        result = future.result()
    except FhirUnavailable as exc:
        incomplete[key] = _FIRST_PAGE_ONLY + exc.reason
        by_server.add(key)
        return
    except Exception as exc:  # a bug, not the server: keep the text out of the reason
        log.error("prefetch %s: unexpected %s following pages", _describe(template), type(exc).__name__)
        incomplete[key] = _FIRST_PAGE_ONLY + "FHIR request failed"
        return
    data[key] = result.bundle
    if result.incomplete:
        incomplete[key] = result.incomplete


def _fetch(client: FhirClient, query: str) -> tuple[dict | None, str | None]:
    if _is_read(query):
        try:
            return client.read(query), None
        except FhirNotFound:
            return None, None
    result = client.search_pages(query)
    return result.bundle, result.incomplete


def resolve(
    service: ServiceDefinition,
    request,
    fhir: FhirAccess | None,
    *,
    deadline: float | None = None,
    use: FhirUse | None = None,
) -> PrefetchResult:
    """Prefetch data for every template of `service` (see the module docstring).

    `request` is any object with `context`, `fhir_server`, `access_token` and `prefetch`
    (hooks.HookRequest). `fhir` is the app's FhirAccess. `deadline` is the absolute
    `time.monotonic()` by which all FHIR requests must be done (default: now + the
    configured budget). Raises ApiError(412, "prefetch_unavailable") when a required key
    cannot be had.
    """
    use = use if use is not None else FhirUse()
    step = _sort_sent(service, request, use)
    if not step.missing and not step.paged:
        return PrefetchResult(data=step.data, unavailable={}, fetched=())
    _build_queries(step, request)
    client, deadline = _open_client(step, request, fhir, deadline)
    if client is not None:
        _gather(step, client, fhir.executor, deadline, request, use)
    return _assemble(step, disclose=fhir is None or bool(fhir.settings.fhir_server_allowlist))


@dataclass
class _Step:
    """What `resolve` knows so far, handed from one named step to the next."""

    templates: dict[str, PrefetchTemplate]
    use: FhirUse
    data: dict[str, dict | None] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # key -> why it must be fetched
    paged: list[str] = field(default_factory=list)  # prefetched searchsets with a next page to follow
    queries: dict[str, str] = field(default_factory=dict)  # key -> rendered query to fetch
    failures: dict[str, str] = field(default_factory=dict)  # key -> safe reason
    incomplete: dict[str, str] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    by_server: set[str] = field(default_factory=set)  # keys whose reason is what the FHIR server did


# 1. Sort what the client sent: used as sent, "no data", to fetch, or to complete (paged).
def _sort_sent(service: ServiceDefinition, request, use: FhirUse) -> _Step:
    sent = request.prefetch or {}
    use.token = "not used" if request.access_token else "none"
    use.missing_keys = [t.key for t in service.prefetch if t.key not in sent]
    use.prefetched = {_resource_type(t) for t in service.prefetch if isinstance(sent.get(t.key), Mapping)}
    step = _Step(templates={t.key: t for t in service.prefetch}, use=use)
    for template in service.prefetch:
        key = template.key
        if key not in sent:
            step.missing[key] = "not prefetched"
            continue
        value = sent[key]
        if value is None:
            step.data[key] = None
        elif is_fhir_resource(value) and value["resourceType"] != "OperationOutcome":
            step.data[key] = value
            if _has_next_page(value):
                step.paged.append(key)
        elif isinstance(value, Mapping) and value.get("resourceType") == "OperationOutcome":
            step.missing[key] = "the client sent an OperationOutcome"
        else:
            step.missing[key] = "the client sent something that is not a FHIR resource"
    return step


# 2. Build the queries: render each template, and keep only what the token's scope allows.
def _build_queries(step: _Step, request) -> None:
    for key in step.missing:
        try:
            step.queries[key] = render_template(step.templates[key].query, request.context or {})
        except TemplateError as exc:
            step.failures[key] = f"cannot build the query: {exc.reason}"
    grants = parse_scope(getattr(request, "scope", None))
    for key in list(step.queries):
        kind = "r" if _is_read(step.queries[key]) else "s"
        if not grants.allows(_resource_type(step.templates[key]), kind):
            del step.queries[key]
            step.use.refused.add(_resource_type(step.templates[key]))
            step.failures[key] = f"{step.missing[key]} and the access token's scope does not allow this {_KIND[kind]}"
    for key in list(step.paged):
        if not grants.allows(_resource_type(step.templates[key]), "s"):
            step.paged.remove(key)
            step.incomplete[key] = _FIRST_PAGE_ONLY + "the access token's scope does not allow this search"


# 3. Open the client for the call's fhirServer and token, or say why nothing can be fetched.
def _open_client(
    step: _Step, request, fhir: FhirAccess | None, deadline: float | None
) -> tuple[FhirClient | None, float | None]:
    if not step.queries and not step.paged:
        return None, deadline
    if not request.fhir_server:
        _cannot_fetch(
            step,
            "and no fhirServer was given to fetch it from",
            "the client sent the first page only and no fhirServer to read the rest from",
        )
        return None, deadline
    if fhir is None:
        _cannot_fetch(
            step,
            "and this service has no FHIR access configured",
            "the client sent the first page only and this service has no FHIR access",
        )
        return None, deadline
    if deadline is None:
        deadline = fhir.new_deadline()
    try:
        return fhir.client(request.fhir_server, request.access_token, deadline), deadline
    except FhirUnavailable as exc:
        for key in step.queries:
            step.failures[key] = exc.reason
        for key in step.paged:
            step.incomplete[key] = _FIRST_PAGE_ONLY + exc.reason
        return None, deadline


def _cannot_fetch(step: _Step, query_reason: str, paged_reason: str) -> None:
    for key in step.queries:
        step.failures[key] = f"{step.missing[key]} {query_reason}"
    for key in step.paged:
        step.incomplete[key] = paged_reason


# 4. Gather: every query and every continuation at once, all before the one deadline.
def _gather(step: _Step, client: FhirClient, executor, deadline: float, request, use: FhirUse) -> None:
    futures: dict[Future, str] = {executor.submit(_fetch, client, query): key for key, query in step.queries.items()}
    continued: dict[Future, str] = {executor.submit(client.follow_pages, step.data[key]): key for key in step.paged}
    futures.update(continued)
    remaining = max(0.0, deadline - time.monotonic()) + _DEADLINE_GRACE_S
    done, not_done = wait(futures, timeout=remaining)
    for future in not_done:
        future.cancel()
        step.by_server.add(futures[future])
        if future in continued:
            step.incomplete[continued[future]] = _FIRST_PAGE_ONLY + "FHIR server did not answer within the time budget"
        else:
            step.failures[futures[future]] = "FHIR server did not answer within the time budget"
    for future in done:
        key = futures[future]
        template = step.templates[key]
        if future in continued:
            _take_continuation(future, key, step.data, step.incomplete, template, step.by_server)
            continue
        try:
            value, partial = future.result()
        except FhirUnavailable as exc:
            step.failures[key] = exc.reason
            if exc.status in (401, 403):
                use.refused.add(_resource_type(template))
                use.token = "refused"
            step.by_server.add(key)
            continue
        except Exception as exc:  # a bug, not the server: keep the text out of the reason
            log.error("prefetch %s: unexpected %s", _describe(template), type(exc).__name__)
            step.failures[key] = "FHIR request failed"
            continue
        step.data[key] = value
        step.fetched.append(key)
        use.fetched.add(_resource_type(template))
        if request.access_token and use.token == "not used":
            use.token = "used"
        if partial:
            step.incomplete[key] = partial
            log.warning("prefetch %s: incomplete: %s", _describe(template), partial)


# 5. Assemble: log what is missing, 412 when a required key is, else the result in order;
# what the server did is told to the client only when `disclose` (an allowlist is set).
def _assemble(step: _Step, disclose: bool = True) -> PrefetchResult:
    templates = step.templates
    for key in step.paged:
        if key in step.incomplete:
            log.warning("prefetch %s: incomplete: %s", _describe(templates[key]), step.incomplete[key])
    for key, reason in step.failures.items():
        log.warning("prefetch %s unavailable: %s", _describe(templates[key]), reason)
    if not disclose:
        for key in step.by_server:
            if key in step.failures:
                step.failures[key] = UNDISCLOSED
            if key in step.incomplete and step.incomplete[key].startswith(_FIRST_PAGE_ONLY):
                step.incomplete[key] = _FIRST_PAGE_ONLY + UNDISCLOSED
    required = [t for t in templates.values() if t.key in step.failures and t.required]
    if required:
        detail = "; ".join(f"{_describe(t)}: {step.failures[t.key]}" for t in required)
        keys = ", ".join(repr(t.key) for t in required)
        raise ApiError(
            412,
            "prefetch_unavailable",
            f"required data could not be obtained: {detail}",
            diagnostics=f"CDS Hooks prefetch key {keys} was absent and could not be fetched",
            expression=tuple(f"prefetch.{t.key}" for t in required),
        )
    order = list(templates)
    return PrefetchResult(
        data=step.data,
        unavailable={k: step.failures[k] for k in order if k in step.failures},
        fetched=tuple(k for k in order if k in step.fetched),
        incomplete=step.incomplete,
    )
