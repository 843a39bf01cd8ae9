"""Reading from the CDS client's FHIR server during one hook call.

One `FhirAccess` per app holds the pooled HTTP session, the small thread pool that
prefetch uses to fetch keys concurrently, and the settings. Per hook call it hands out a
`FhirClient` bound to that call's fhirServer, access token and absolute deadline.

Safety rules kept here:
- the token is only sent to URLs under the fhirServer base (scheme, host, port and path
  prefix); redirects are never followed and a Bundle's next link elsewhere is not followed;
- no request can outlive the deadline (every socket wait is bounded by the time left);
- the answers of one hook call (every key, every page) are read up to one size cap in all,
  while they stream (chunked answers too), into one buffer per answer; past the cap the
  connection is dropped unread; an answer must be JSON that is a FHIR resource;
- `FhirUnavailable.reason` is our own text: never the token, never a URL (a rendered URL
  carries the patient id), never library exception text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from cds_service import metrics
from cds_service.config import Settings
from cds_service.fhir.decode import Decoding

log = logging.getLogger(__name__)
# urllib3 logs every request line, query included, at DEBUG: the query carries the patient
# id. Keep that logger above DEBUG whatever the app's logging configuration says.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

ACCEPT = "application/fhir+json"
# Cap on the decoded answers of one hook call, all keys and pages together (a ~1,100-resource
# record is a few MB of JSON). Per call, not per answer: six keys of ten pages each would
# otherwise let one call hold 60 times the cap.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
_CHUNK = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource content has been reduced",
}
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}\Z")


class FhirUnavailable(Exception):
    """The data cannot be had from the FHIR server. `reason` is safe to show and log."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # the FHIR server's HTTP status, when it answered one


class FhirNotFound(FhirUnavailable):
    """A read answered 404/410: the resource does not exist (prefetch: no data)."""


@dataclass(frozen=True)
class SearchResult:
    bundle: dict  # searchset Bundle, entries of all pages followed
    pages: int
    incomplete: str | None  # safe reason when more pages existed than were followed


def new_session(pool_size: int) -> requests.Session:
    """The one pooled HTTP session of an app (thread-safe for our use: GET only).

    Environment proxies and .netrc are ignored (`trust_env = False`) so that nothing but
    our own Authorization header is ever sent; no retries, no redirects.
    """
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"Accept": ACCEPT})
    return session


def is_fhir_resource(value: object) -> bool:
    """A JSON object (or a decoded resource, fhir/decode.py) with a plausible resourceType
    (no further validation: that is costly)."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("resourceType"), str)
        and _RESOURCE_TYPE.match(value["resourceType"]) is not None
    )


def check_fhir_server(base_url: str, allowlist: tuple[str, ...] = ()) -> str:
    """The fhirServer base without trailing slash, or FhirUnavailable if it may not be used."""
    try:
        parts = urlsplit(base_url)
        parts.port  # raises ValueError for a malformed port
    except ValueError:
        raise FhirUnavailable("fhirServer is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FhirUnavailable("fhirServer is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise FhirUnavailable("fhirServer must not contain credentials")
    if parts.query or parts.fragment:
        raise FhirUnavailable("fhirServer must not contain a query or fragment")
    base = base_url.rstrip("/")
    if allowlist and not any(is_under(base, entry, allow_equal=True) for entry in allowlist):
        raise FhirUnavailable("fhirServer is not on this service's allowlist")
    return base


def is_under(url: str, base: str, *, allow_equal: bool = False) -> bool:
    """Same scheme, host and port as `base`, and a path inside base's path (no dot segments)."""
    try:
        u, b = urlsplit(url), urlsplit(base)
        u_port = u.port or _DEFAULT_PORTS.get(u.scheme.lower())
        b_port = b.port or _DEFAULT_PORTS.get(b.scheme.lower())
    except ValueError:
        return False
    if u.username is not None or u.password is not None:
        return False
    if (u.scheme.lower(), (u.hostname or "").lower(), u_port) != (b.scheme.lower(), (b.hostname or "").lower(), b_port):
        return False
    if not u.hostname:
        return False
    path = unquote(u.path)
    if "\\" in path or any(seg in (".", "..") for seg in path.split("/")):
        return False
    prefix = b.path.rstrip("/")
    if allow_equal and u.path.rstrip("/") == prefix:
        return True
    return u.path.startswith(prefix + "/")


class FhirClient:
    """GETs under one fhirServer base with one access token, all before one deadline."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        access_token: str | None,
        deadline: float,
        max_pages: int,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        decoding: Decoding | None = None,
    ) -> None:
        self._session = session
        self._decoding = decoding
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": ACCEPT}
        if access_token:
            self._headers["Authorization"] = f"Bearer {access_token}"
        self.deadline = deadline
        self.max_pages = max(1, int(max_pages))
        self.max_response_bytes = max_response_bytes
        self._bytes_read = 0  # by every GET of this call (prefetch keys run in parallel)
        self._bytes_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the token
        return f"FhirClient(base_url={self.base_url!r})"

    def read(self, relative_url: str) -> dict:
        """One GET of a resource (e.g. `Patient/123`). 404/410 raise FhirNotFound."""
        expected = self._relative_path(relative_url).split("/", 1)[0]
        resource = self._get(self._absolute(relative_url), read=True)
        kind = resource["resourceType"]
        if kind == "OperationOutcome":
            raise FhirUnavailable("FHIR server answered an OperationOutcome instead of the resource")
        if _RESOURCE_TYPE.match(expected) and kind != expected:
            raise FhirUnavailable(f"FHIR server answered a {kind} for a {expected} read")
        return resource

    def search(self, relative_url: str) -> dict:
        """A searchset Bundle with the entries of all pages followed (see `search_pages`)."""
        return self.search_pages(relative_url).bundle

    def search_pages(self, relative_url: str) -> SearchResult:
        """Search, following Bundle.link[next] up to max_pages pages under the base URL.

        When a further page exists but is not followed (page limit, or a next link outside
        the fhirServer base), the merged Bundle carries the SUBSETTED tag and `incomplete`
        says why.
        """
        first = self._searchset(self._get(self._absolute(relative_url), read=False))
        return self.follow_pages(first)

    def follow_pages(self, first: dict) -> SearchResult:
        """The rest of a search whose first page is `first` (fetched here or prefetched by
        the CDS client): Bundle.link[next] followed under the base URL, up to max_pages
        pages in all. A page that cannot be read raises FhirUnavailable."""
        first = self._searchset(first)
        entries = list(first.get("entry") or [])
        pages = 1
        incomplete = None
        page = first
        while True:
            next_url = _next_link(page)
            if next_url is None:
                break
            next_url = urljoin(self.base_url + "/", next_url)
            if not is_under(next_url, self.base_url, allow_equal=True):
                incomplete = "next page link points outside the FHIR server; not followed"
                break
            if pages >= self.max_pages:
                incomplete = f"more than {self.max_pages} pages; the rest was not read"
                break
            page = self._searchset(self._get(next_url, read=False))
            entries.extend(page.get("entry") or [])
            pages += 1
        bundle = {k: v for k, v in first.items() if k not in ("link", "entry")}
        bundle["entry"] = entries
        if incomplete:
            meta = dict(bundle.get("meta") or {})
            meta["tag"] = [*(meta.get("tag") or []), dict(_SUBSETTED)]
            bundle["meta"] = meta
        return SearchResult(bundle=bundle, pages=pages, incomplete=incomplete)

    # -- one GET -------------------------------------------------------------------

    def _relative_path(self, relative_url: str) -> str:
        parts = urlsplit(relative_url)
        path = parts.path
        if (
            parts.scheme
            or parts.netloc
            or parts.fragment
            or not path
            or path.startswith("/")
            or "\\" in unquote(path)
            or any(seg in ("", ".", "..") for seg in unquote(path).split("/"))
        ):
            raise FhirUnavailable("the query is not a relative FHIR URL")
        return path

    def _absolute(self, relative_url: str) -> str:
        self._relative_path(relative_url)
        return f"{self.base_url}/{relative_url}"

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise FhirUnavailable("time budget for FHIR requests exhausted")
        return remaining

    def _get(self, url: str, *, read: bool) -> dict:
        kind = "read" if read else "search"
        started = time.perf_counter()
        outcome = "error"
        try:
            value = self._get_unmetered(url, read=read)
            outcome = "ok"
            return value
        except FhirNotFound:
            outcome = "not_found"
            raise
        except FhirUnavailable:
            if time.monotonic() >= self.deadline:
                outcome = "timeout"
            raise
        finally:
            metrics.FHIR_REQUESTS.labels(kind=kind, outcome=outcome).inc()
            metrics.FHIR_LATENCY.labels(kind=kind).observe(time.perf_counter() - started)

    def _get_unmetered(self, url: str, *, read: bool) -> dict:
        remaining = self._remaining()
        try:
            response = self._session.get(
                url,
                headers=self._headers,
                timeout=(remaining, remaining),
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.Timeout:
            raise FhirUnavailable("FHIR server did not answer within the time budget") from None
        except requests.exceptions.ConnectionError:
            raise FhirUnavailable("FHIR server could not be reached") from None
        except requests.exceptions.InvalidHeader:
            raise FhirUnavailable("access token cannot be sent in an HTTP header") from None
        except (requests.RequestException, ValueError):
            raise FhirUnavailable("FHIR request failed") from None
        with response:
            status = response.status_code
            if status != 200:
                if read and status in (404, 410):
                    raise FhirNotFound(f"FHIR server answered {status}")
                if 300 <= status < 400:
                    raise FhirUnavailable(f"FHIR server answered a redirect ({status}); not followed")
                raise FhirUnavailable(f"FHIR server answered {status}", status=status)
            content_type = response.headers.get("Content-Type", "").lower()
            if content_type and "json" not in content_type:
                raise FhirUnavailable("FHIR server answered a body that is not JSON")
            body = self._body(response)
        # Decoded keeping only the elements the record reads; anything of another shape
        # (or not JSON) is parsed generically and judged as before.
        value = self._decoding.answer(body) if self._decoding is not None else None
        if value is not None:
            if not is_fhir_resource(value):
                raise FhirUnavailable("FHIR server answered JSON that is not a FHIR resource")
            return value
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise FhirUnavailable("FHIR server answered malformed JSON") from None
        if not is_fhir_resource(value):
            raise FhirUnavailable("FHIR server answered JSON that is not a FHIR resource")
        return value

    def _take_bytes(self, count: int) -> None:
        """Count `count` more bytes read in this call; FhirUnavailable past the cap."""
        with self._bytes_lock:
            self._bytes_read += count
            over = self._bytes_read > self.max_response_bytes
        if over:
            raise FhirUnavailable("FHIR server answers are larger than the size limit of a hook call")

    def _body(self, response: requests.Response) -> bytearray:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_response_bytes - self._bytes_read:
            raise FhirUnavailable("FHIR server answers are larger than the size limit of a hook call")
        raw = response.raw
        # One growing buffer rather than a list of chunks joined at the end: never two
        # copies, and past the allocator's mmap threshold it goes back to the system when
        # freed (see worker_gc.return_large_buffers).
        body = bytearray()
        try:
            while True:
                remaining = self._remaining()
                _bound_socket_wait(raw, remaining)
                chunk = raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                self._take_bytes(len(chunk))
                body += chunk
        except FhirUnavailable:
            del body
            raise
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError, ValueError):
            if time.monotonic() >= self.deadline:
                raise FhirUnavailable("FHIR server did not answer within the time budget") from None
            raise FhirUnavailable("connection to the FHIR server broke while reading the answer") from None
        return body

    @staticmethod
    def _searchset(value: dict) -> dict:
        if value["resourceType"] == "OperationOutcome":
            raise FhirUnavailable("FHIR server answered an OperationOutcome instead of a Bundle")
        if value["resourceType"] != "Bundle":
            raise FhirUnavailable(f"FHIR server answered a {value['resourceType']} instead of a searchset Bundle")
        if value.get("type", "searchset") != "searchset" or not isinstance(value.get("entry", []), list):
            raise FhirUnavailable("FHIR server answered a Bundle that is not a searchset")
        return value


def _next_link(bundle: dict) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def _bound_socket_wait(raw, remaining: float) -> None:
    """Make the next socket wait end by the deadline (urllib3 only bounds each wait by the
    read timeout, which would let a trickling server overrun the budget)."""
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.settimeout(max(0.001, remaining))


class FhirAccess:
    """Per-app FHIR access: one pooled session, one small thread pool, the settings.

    Call it (or `.client`) per hook call to get a `FhirClient` for that call's fhirServer.
    """

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        prefetch_keys: int = 1,
        decoding: Decoding | None = None,
    ) -> None:
        self.settings = settings
        # None: answers are parsed whole (json); else decoded keeping the elements read.
        self.decoding = decoding
        # Sized so that every request thread can fetch all its keys at once: a call never
        # waits for a pool thread another call holds (its budget would run out unsent).
        workers = max(1, settings.fhir_max_workers, settings.http_threads * max(1, prefetch_keys))
        self.pool_size = workers
        self.session = session or new_session(pool_size=workers * 2)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir-prefetch")
        self.max_response_bytes = max_response_bytes

    @property
    def time_budget_s(self) -> float:
        return self.settings.fhir_time_budget_s

    def new_deadline(self, accepted: float | None = None) -> float:
        """The end of the FHIR time budget of a call accepted at `accepted` (monotonic; now
        if not given): the budget counts from acceptance, not from the first request."""
        start = time.monotonic() if accepted is None else accepted
        return start + self.settings.fhir_time_budget_s

    def client(self, base_url: str, access_token: str | None, deadline: float) -> FhirClient:
        """A client for one hook call; FhirUnavailable if the fhirServer may not be used."""
        base = check_fhir_server(base_url, self.settings.fhir_server_allowlist)
        return FhirClient(
            self.session,
            base,
            access_token,
            deadline,
            self.settings.fhir_max_pages,
            max_response_bytes=self.max_response_bytes,
            decoding=self.decoding,
        )

    __call__ = client

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.session.close()
