"""Population extraction for offline learning: FHIR Bulk Data `$export`, with a fallback to
paged FHIR searches when the server's CapabilityStatement offers no export.

- Kick-off: GET [base]/$export (system level) or [base]/Group/<id>/$export, with
  `Prefer: respond-async`, `_type` limited to what the caller reads and ndjson output.
- Polling: the status URL with backoff (the server's Retry-After, clamped), inside a bounded
  total wait; past it the job is cancelled (DELETE) and `BulkError` says so.
- Files: each ndjson file is streamed line by line; nothing holds a whole file, let alone
  the population. With a `Decoding`, each line is decoded once into its `Line` (the
  declared elements only, fhir/decode.py); a line that is not a JSON object is parsed
  generically and judged as without it (not JSON: `BulkError`; not an object: skipped). The access token goes only to URLs of the FHIR server's origin, and only
  when the manifest says the files need it.
- Search fallback: [base]/<type>?_count=N, following `next` links under the base only,
  page by page (for a Group: the members, a chunk of patients at a time).

Authorization comes from a callable (SMART Backend Services or a static bearer token) so
this module does not depend on how the token is had. `BulkError.reason` is our own text:
never a token, never a URL with a patient id, never the server's diagnostics.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from cds_service.fhir.decode import Decoding

NDJSON = "application/fhir+ndjson"
ACCEPT = "application/fhir+json"
RETRYABLE = frozenset({429, 500, 502, 503, 504})
BULK_IG = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"


class BulkError(Exception):
    """The population could not be extracted. `reason` is safe to show and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ExtractionInfo:
    method: str  # "bulk-data" | "search"
    level: str  # "system" | "group"
    group: str | None
    types: tuple[str, ...]
    transaction_time: str | None  # the export manifest's transactionTime (bulk) or the start (search)
    files: int = 0
    polls: int = 0


@dataclass
class Extraction:
    info: ExtractionInfo
    resources: Iterator[Mapping[str, Any]]  # streamed; consume once (JSON objects, or decoded `Line`s)
    counts: dict[str, int] = field(default_factory=dict)  # filled while streaming

    def provenance(self) -> dict:
        """How the data was extracted, for a report (once the resources have been read)."""
        return {
            "method": self.info.method,
            "level": self.info.level,
            "group": self.info.group,
            "types": list(self.info.types),
            "transaction_time": self.info.transaction_time,
            "files": self.info.files,
            "resources": dict(sorted(self.counts.items())),
        }


class BulkClient:
    def __init__(
        self,
        base_url: str,
        authorization: Callable[[], str] | None = None,
        *,
        session: requests.Session | None = None,
        max_wait_s: float = 3600.0,
        poll_initial_s: float = 0.5,
        poll_max_s: float = 60.0,
        timeout_s: float = 60.0,
        page_size: int = 500,
        on_unauthorized: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        decoding: Decoding | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self._authorization = authorization
        self._on_unauthorized = on_unauthorized
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.max_wait_s = max_wait_s
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.timeout_s = timeout_s
        self.page_size = page_size
        self._sleep = sleep
        self._decoding = decoding

    # -- requests ----------------------------------------------------------------------------
    def _own(self, url: str) -> bool:
        """The URL is under the FHIR base (scheme, host, port, path prefix)."""
        a, b = urlsplit(url), urlsplit(self.base)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc) and (a.path + "/").startswith(b.path.rstrip("/") + "/")

    def _same_origin(self, url: str) -> bool:
        a, b = urlsplit(url), urlsplit(self.base)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def _headers(self, extra: dict | None = None, auth: bool = True) -> dict:
        headers = {"Accept": ACCEPT}
        if auth and self._authorization is not None:
            try:
                headers["Authorization"] = self._authorization()
            except Exception as exc:
                raise BulkError(getattr(exc, "reason", "no access token could be had")) from None
        headers.update(extra or {})
        return headers

    def _request(self, method: str, url: str, *, headers: dict | None = None, auth: bool = True, stream: bool = False):
        for attempt in (1, 2):
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=self._headers(headers, auth),
                    timeout=self.timeout_s,
                    allow_redirects=False,
                    stream=stream,
                )
            except requests.RequestException:
                raise BulkError("the FHIR server did not answer") from None
            if response.status_code == 401 and attempt == 1 and auth and self._on_unauthorized is not None:
                response.close()
                self._on_unauthorized()  # an expired token: get a new one, once
                continue
            return response
        return response

    # -- capability --------------------------------------------------------------------------
    def capability(self) -> dict:
        response = self._request("GET", f"{self.base}/metadata")
        if response.status_code != 200:
            raise BulkError(f"the FHIR server's CapabilityStatement could not be read ({response.status_code})")
        body = _json_of(response, "the FHIR server's CapabilityStatement")
        if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
            raise BulkError("the FHIR server's /metadata is not a CapabilityStatement")
        return body

    @staticmethod
    def offers_export(capability: dict, group: str | None) -> bool:
        """Does the CapabilityStatement offer $export at the level asked for?"""
        if BULK_IG in (capability.get("instantiates") or []):
            return True
        for rest in capability.get("rest") or []:
            if not isinstance(rest, dict):
                continue
            if group is None and any(_is_export(op) for op in rest.get("operation") or []):
                return True
            if group is not None:
                for resource in rest.get("resource") or []:
                    if isinstance(resource, dict) and resource.get("type") == "Group":
                        if any(_is_export(op) for op in resource.get("operation") or []):
                            return True
        return False

    # -- extraction --------------------------------------------------------------------------
    def extract(
        self, types: tuple[str, ...], group: str | None = None, prefer_bulk: bool = True, since: str | None = None
    ) -> Extraction:
        """The resources of these types (system level, or a Group's patients), streamed.
        `since` (a FHIR instant): only resources changed since then (`$export` `_since`; the
        search fallback `_lastUpdated=ge`)."""
        capability = self.capability()
        if prefer_bulk and self.offers_export(capability, group):
            return self._bulk(types, group, since)
        return self._search(types, group, since)

    def _bulk(self, types: tuple[str, ...], group: str | None, since: str | None = None) -> Extraction:
        path = f"Group/{group}/$export" if group else "$export"
        params = {"_type": ",".join(types), "_outputFormat": NDJSON}
        if since:
            params["_since"] = since
        query = urlencode(params)
        response = self._request("GET", f"{self.base}/{path}?{query}", headers={"Prefer": "respond-async"})
        if response.status_code != 202:
            raise BulkError(f"the FHIR server refused the $export kick-off ({response.status_code})")
        status_url = response.headers.get("Content-Location", "")
        if not self._own(status_url) and not self._same_origin(status_url):
            raise BulkError("the $export status URL is not on the FHIR server")
        manifest, polls = self._poll(status_url)
        outputs = [o for o in manifest.get("output") or [] if isinstance(o, dict)]
        needs_token = bool(manifest.get("requiresAccessToken", True))
        for output in outputs:
            url = output.get("url")
            if not isinstance(url, str) or (needs_token and not self._same_origin(url)):
                raise BulkError("an export file is not on the FHIR server's origin; its token is not sent elsewhere")
        info = ExtractionInfo(
            method="bulk-data",
            level="group" if group else "system",
            group=group,
            types=types,
            transaction_time=manifest.get("transactionTime")
            if isinstance(manifest.get("transactionTime"), str)
            else None,
            files=len(outputs),
            polls=polls,
        )
        extraction = Extraction(info=info, resources=iter(()))
        extraction.resources = self._files(outputs, set(types), needs_token, status_url, extraction.counts)
        return extraction

    def _poll(self, status_url: str) -> tuple[dict, int]:
        deadline = time.monotonic() + self.max_wait_s
        delay = self.poll_initial_s
        polls = 0
        while True:
            response = self._request("GET", status_url)
            polls += 1
            if response.status_code == 200:
                manifest = _json_of(response, "the $export manifest")
                if not isinstance(manifest, dict):
                    raise BulkError("the $export manifest is not a JSON object")
                return manifest, polls
            if response.status_code not in (202, *RETRYABLE):
                raise BulkError(f"the $export job failed on the server ({response.status_code})")
            wait = _retry_after(response.headers.get("Retry-After"))
            wait = min(self.poll_max_s, max(self.poll_initial_s, wait if wait is not None else delay))
            delay = min(self.poll_max_s, delay * 2)
            left = deadline - time.monotonic()
            if left <= 0:
                self._cancel(status_url)
                raise BulkError(f"the $export job did not complete within {self.max_wait_s:g} s; it was cancelled")
            self._sleep(min(wait, left))

    def _cancel(self, status_url: str) -> None:
        with contextlib.suppress(BulkError):
            self._request("DELETE", status_url).close()

    def _files(
        self, outputs: list[dict], types: set[str], needs_token: bool, status_url: str, counts: dict[str, int]
    ) -> Iterator[Mapping[str, Any]]:
        decode = self._decoding.resource if self._decoding is not None else None
        for output in outputs:
            if output.get("type") not in types:
                continue
            response = self._request("GET", output["url"], headers={"Accept": NDJSON}, auth=needs_token, stream=True)
            if response.status_code != 200:
                response.close()
                raise BulkError(f"an export file could not be downloaded ({response.status_code})")
            with response:
                try:
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        resource = decode(line) if decode is not None else None
                        if resource is None:  # not a JSON object, or no decoder: judged whole
                            try:
                                resource = json.loads(line)
                            except ValueError:
                                raise BulkError("an export file holds a line that is not JSON") from None
                        if isinstance(resource, Mapping) and resource.get("resourceType") in types:
                            counts[resource["resourceType"]] = counts.get(resource["resourceType"], 0) + 1
                            yield resource
                except requests.RequestException:
                    raise BulkError("an export file download was interrupted") from None
        self._cancel(status_url)  # done: the server may delete the files

    # -- search fallback ---------------------------------------------------------------------
    def _search(self, types: tuple[str, ...], group: str | None, since: str | None = None) -> Extraction:
        info = ExtractionInfo(
            method="search",
            level="group" if group else "system",
            group=group,
            types=types,
            transaction_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        extraction = Extraction(info=info, resources=iter(()))
        extraction.resources = self._search_all(types, group, extraction.counts, since)
        return extraction

    def _search_all(
        self, types: tuple[str, ...], group: str | None, counts: dict[str, int], since: str | None = None
    ) -> Iterator[dict]:
        deadline = time.monotonic() + self.max_wait_s
        changed = {"_lastUpdated": f"ge{since}"} if since else {}
        if group is None:
            for rtype in types:
                yield from self._pages(
                    f"{self.base}/{rtype}?{urlencode({'_count': self.page_size, **changed})}", rtype, counts, deadline
                )
            return
        members = self._group_members(group)
        for start in range(0, len(members), 50):
            chunk = members[start : start + 50]
            for rtype in types:
                if rtype == "Patient":
                    query = {"_id": ",".join(chunk), "_count": self.page_size, **changed}
                else:
                    query = {"patient": ",".join(f"Patient/{m}" for m in chunk), "_count": self.page_size, **changed}
                yield from self._pages(f"{self.base}/{rtype}?{urlencode(query)}", rtype, counts, deadline)

    def _group_members(self, group: str) -> list[str]:
        response = self._request("GET", f"{self.base}/Group/{group}")
        if response.status_code != 200:
            raise BulkError(f"the Group could not be read ({response.status_code})")
        body = _json_of(response, "the Group")
        members = []
        for member in body.get("member") or [] if isinstance(body, dict) else []:
            ref = (member.get("entity") or {}).get("reference") if isinstance(member, dict) else None
            if isinstance(ref, str) and "Patient/" in ref:
                members.append(ref.rsplit("/", 1)[-1])
        return members

    def _pages(self, url: str, rtype: str, counts: dict[str, int], deadline: float) -> Iterator[dict]:
        while url:
            if time.monotonic() > deadline:
                raise BulkError(f"the paged search did not finish within {self.max_wait_s:g} s")
            response = self._request("GET", url)
            if response.status_code != 200:
                raise BulkError(f"a {rtype} search failed ({response.status_code})")
            bundle = _json_of(response, f"a {rtype} search page")
            for entry in bundle.get("entry") or [] if isinstance(bundle, dict) else []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict) and resource.get("resourceType") == rtype:
                    counts[rtype] = counts.get(rtype, 0) + 1
                    yield resource
            url = None
            for link in bundle.get("link") or [] if isinstance(bundle, dict) else []:
                if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
                    if not self._own(link["url"]):
                        raise BulkError("a search page's next link leaves the FHIR server; not followed")
                    url = link["url"]


def _is_export(op: object) -> bool:
    if not isinstance(op, dict):
        return False
    name = op.get("name")
    definition = op.get("definition") if isinstance(op.get("definition"), str) else ""
    return name in ("export", "$export") or definition.endswith("/export")


def _json_of(response: requests.Response, what: str) -> object:
    """The JSON body of an answer, or BulkError("<what> is not JSON")."""
    try:
        return response.json()
    except ValueError:
        raise BulkError(f"{what} is not JSON") from None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use our own backoff
