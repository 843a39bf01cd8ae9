"""Pytest plugin: no log of the test run holds a JWT, a FHIR access token or a patient id.

Listed in tests/conftest.py `pytest_plugins`. For the whole session it

- puts the root logger at DEBUG (restored at the end) and adds one handler to it (and to
  every logger that does not propagate) that keeps the text of every record of every
  logger, exception and stack text included; levels a logger sets for itself are kept,
  so what is checked is what the code really emits (e.g. fhir_client.py holds
  `urllib3.connectionpool` at INFO: its DEBUG request lines are never produced);
- reads, at the end, the log files registered with `watch_file(path)` (the gunicorn
  service of tests/served.py writes service.log);
- keeps a registry of values that must never appear, `sensitive(value, kind)` with kind
  "jwt", "fhir-token" or "patient-id". Registration is automatic for everything that
  reaches the service: wrappers (installed for the session) around
  `hooks.parse_hook_request` (the raw body's context.patientId, a userId `Patient/<id>`
  and fhirAuthorization.access_token, before validation), `prefetch.resolve` (the
  request's patientId and token), `FhirClient.__init__` (the token), `verify_client_jwt`
  (the bearer token of the Authorization header) and `requests.Session.request` (CDS Hooks
  bodies and bearer tokens that tests send to subprocess servers);
- looks for anything shaped like a JWT (`eyJ...` header, payload and signature, base64url)
  in every line, registered or not.

Which values are checked (to keep ordinary text from being a false leak): at least
MIN_SECRET_CHARS (6) characters, at least MIN_DISTINCT_CHARS (4) different characters
("000000" is not an identifier anyone could recognise), and not a plain word: a value of
letters only, at most 12 of them, in lower, upper or capitalised case ("example",
"Patient", "UNKNOWN") is taken for a dictionary word. Short or generic ids such as "1",
"p1", "123" or "example" are therefore registered as not checkable (`sensitive` returns
False); tests that want a patient id checked use a distinctive one.

One source is exempt from the patient-id check only: records of the `werkzeug` logger.
In-process, werkzeug serves only the test-side FHIR stub servers (pytest-httpserver;
the service is called through Flask's test client or runs under gunicorn), and their
access log is the FHIR server's own log, whose URLs name the patient like any EHR
server's. Those records are still checked for tokens and JWTs.

`tests/test_log_guard.py::test_no_secret_in_logs_of_the_whole_run` is moved to the end of
the run and fails listing each leak as kind and place, never the value (a short sha256
fingerprint tells leaks apart). At session end the check runs once more over what came
later (session fixture teardown), and in runs that did not include that test: a leak
then fails the run with a report section.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import pytest

KINDS = ("jwt", "fhir-token", "patient-id")
JWT_SHAPED = "jwt-shaped"
MIN_SECRET_CHARS = 6
MIN_DISTINCT_CHARS = 4
FINAL_TEST = "test_log_guard.py::test_no_secret_in_logs_of_the_whole_run"
# Loggers the unit tests of the guard plant leaks on: never watched by the session guard.
SELF_TEST_LOGGER = "log_guard.self_test"
# The test-side FHIR stub servers' access log (see the module docstring).
FHIR_SERVER_LOGGERS = ("werkzeug",)

JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_PLAIN_WORD = re.compile(r"[a-z]{1,12}|[A-Z][a-z]{0,11}|[A-Z]{1,12}")
_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)


def is_checkable(value: str) -> bool:
    """Whether `value` is distinctive enough to be searched for (module docstring rules)."""
    return (
        len(value) >= MIN_SECRET_CHARS
        and len(set(value)) >= MIN_DISTINCT_CHARS
        and _PLAIN_WORD.fullmatch(value) is None
    )


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True)
class Leak:
    kind: str  # one of KINDS, or "jwt-shaped"
    where: str  # which log source, and during which test
    fingerprint: str  # sha256 prefix of the leaked value, never the value

    def __str__(self) -> str:
        return f"{self.kind} in {self.where} (sha256 {self.fingerprint})"


@dataclass(frozen=True)
class _Source:
    where: str
    patient_ids_exempt: bool


class _KeepingHandler(logging.Handler):
    def __init__(self, guard: LogGuard) -> None:
        super().__init__(logging.NOTSET)
        self.guard = guard
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record whose arguments do not fit its message: keep both raw
            text = f"{record.levelname} {record.name}: {record.msg!r} % {record.args!r}"
        self.guard._keep(text, record.name, record.levelname)


class LogGuard:
    """Keeps log text and the values that must not appear in it; `leaks()` compares them."""

    def __init__(self) -> None:
        self.current_test = "session setup"
        self.records_seen = 0
        self._secrets: dict[str, str] = {}  # value -> kind
        self._texts: dict[str, _Source] = {}  # distinct log text -> its first source
        self._files: dict[Path, str] = {}  # watched file -> test that registered it
        self.handler = _KeepingHandler(self)
        self._attached: list[logging.Logger] = []

    # -- registering ------------------------------------------------------------------

    def sensitive(self, value: object, kind: str) -> bool:
        """Register a value that no log may contain; False if it is too generic to check."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
        if not isinstance(value, str) or not is_checkable(value):
            return False
        self._secrets.setdefault(value, kind)
        return True

    def is_registered(self, value: str) -> bool:
        return value in self._secrets

    def watch_file(self, path: str | Path) -> None:
        """Check this log file (e.g. a subprocess' output) too, as it is at check time."""
        self._files.setdefault(Path(path), self.current_test)

    # -- capturing --------------------------------------------------------------------

    def attach(self, logger: logging.Logger) -> None:
        if self.handler not in logger.handlers:
            logger.addHandler(self.handler)
            self._attached.append(logger)

    def attach_non_propagating(self) -> None:
        """Loggers that do not propagate never reach the root handler: watch them directly."""
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if (
                isinstance(logger, logging.Logger)
                and not logger.propagate
                and not (name == SELF_TEST_LOGGER or name.startswith(SELF_TEST_LOGGER + "."))
            ):
                self.attach(logger)

    def detach(self) -> None:
        for logger in self._attached:
            logger.removeHandler(self.handler)
        self._attached.clear()

    def _keep(self, text: str, logger_name: str, level: str) -> None:
        self.records_seen += 1
        if text not in self._texts:
            exempt = logger_name.split(".", 1)[0] in FHIR_SERVER_LOGGERS
            self._texts[text] = _Source(f"log record {logger_name} {level} during {self.current_test}", exempt)

    # -- checking ---------------------------------------------------------------------

    def _sources(self) -> list[tuple[str, _Source]]:
        sources = list(self._texts.items())
        for path, test in self._files.items():
            try:
                content = path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                sources.append(
                    (
                        f"\x00unreadable\x00{path}",
                        _Source(
                            f"watched log file {path} (registered during {test}) cannot be read: {type(exc).__name__}",
                            False,
                        ),
                    )
                )
                continue
            for number, line in enumerate(content.splitlines(), start=1):
                sources.append((line, _Source(f"log file {path} line {number} (registered during {test})", False)))
        return sources

    def leaks(self, max_places: int = 5) -> list[Leak]:
        """Every registered value and JWT-shaped string found in the kept text and files.

        Each value is reported at up to `max_places` places; the value itself never.
        """
        sources = self._sources()
        leaks: list[Leak] = [
            Leak("unreadable-log", source.where, "-") for text, source in sources if text.startswith("\x00unreadable")
        ]
        starts: list[int] = []
        parts: list[str] = []
        offset = 0
        for text, _source in sources:
            starts.append(offset)
            parts.append(text)
            offset += len(text) + 1
        combined = "\n".join(parts)

        def source_at(position: int) -> _Source:
            return sources[bisect_right(starts, position) - 1][1]

        for value, kind in list(self._secrets.items()):
            places = 0
            position = combined.find(value)
            while position >= 0 and places < max_places:
                source = source_at(position)
                if not (kind == "patient-id" and source.patient_ids_exempt):
                    leaks.append(Leak(kind, source.where, fingerprint(value)))
                    places += 1
                position = combined.find(value, position + 1)
        jwt_places = {leak.where for leak in leaks if leak.kind == "jwt"}
        shaped = 0
        for match in JWT_PATTERN.finditer(combined):
            where = source_at(match.start()).where
            if where in jwt_places:
                continue  # already reported as a registered JWT
            leaks.append(Leak(JWT_SHAPED, where, fingerprint(match.group(0))))
            shaped += 1
            if shaped >= 20:
                break
        # One line per kind and place (a JWT and its signature segment are one leak).
        unique: dict[tuple[str, str], Leak] = {}
        for leak in leaks:
            unique.setdefault((leak.kind, leak.where), leak)
        return list(unique.values())


# --------------------------------------------------------------------- the session guard

SESSION = LogGuard()


def sensitive(value: object, kind: str) -> bool:
    """Register, for the whole test run, a value no log may contain (see LogGuard.sensitive)."""
    return SESSION.sensitive(value, kind)


def watch_file(path: str | Path) -> None:
    """Have the whole-run check read this log file too (see LogGuard.watch_file)."""
    SESSION.watch_file(path)


def register_hook_body(body: object, guard: LogGuard = SESSION) -> None:
    """A CDS Hooks request body: its patient id(s) and FHIR access token."""
    if not isinstance(body, dict):
        return
    context = body.get("context")
    if isinstance(context, dict):
        guard.sensitive(context.get("patientId"), "patient-id")
        user = context.get("userId")
        if isinstance(user, str) and user.startswith("Patient/"):
            guard.sensitive(user.split("/", 1)[1], "patient-id")
    auth = body.get("fhirAuthorization")
    if isinstance(auth, dict):
        guard.sensitive(auth.get("access_token"), "fhir-token")


def register_authorization(header: object, default_kind: str, guard: LogGuard = SESSION) -> None:
    """The token of an `Authorization: Bearer ...` header: a JWT if shaped like one (then
    its signature segment too: logging that part alone leaks the token's secret part)."""
    if not isinstance(header, str):
        return
    match = _BEARER.match(header)
    token = match.group(1) if match else header.strip()
    if JWT_PATTERN.fullmatch(token):
        guard.sensitive(token, "jwt")
        guard.sensitive(token.rsplit(".", 1)[1], "jwt")
    else:
        guard.sensitive(token, default_kind)


def _register_request(request: object, guard: LogGuard = SESSION) -> None:
    context = getattr(request, "context", None)
    if isinstance(context, dict):
        guard.sensitive(context.get("patientId"), "patient-id")
    guard.sensitive(getattr(request, "access_token", None), "fhir-token")


class _Patches:
    """Session-long wrappers that register what passes through; undone at the end."""

    def __init__(self) -> None:
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, make) -> None:
        original = getattr(owner, name)
        self._undo.append((owner, name, original))
        setattr(owner, name, make(original))

    def undo(self) -> None:
        while self._undo:
            owner, name, original = self._undo.pop()
            setattr(owner, name, original)


def _before(needs: str, register):
    """A wrapper maker: `register(arguments by name)`, then the original, unchanged.

    The original must have a parameter `needs` (else the registration would silently stop
    when the code changes: fail loudly instead). A call that does not fit the original's
    signature registers nothing and gets the original's own TypeError."""

    def make(original):
        signature = inspect.signature(original)
        if needs not in signature.parameters:
            raise RuntimeError(
                f"log_guard: {original.__qualname__} has no parameter {needs!r} any more; "
                "update the registration in tests/log_guard.py"
            )

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            try:
                arguments = signature.bind(*args, **kwargs).arguments
            except TypeError:
                arguments = None
            if arguments is not None:
                register(arguments)
            return original(*args, **kwargs)

        return wrapper

    return make


def _install_registration(patches: _Patches) -> None:
    import requests

    from cds_service import hook_call
    from cds_service.fhir import client as fhir_client
    from cds_service.fhir import prefetch
    from cds_service.http import authenticate, routes
    from cds_service.http import hook_request as hooks
    from cds_service.security import client_auth

    on_parse = _before("body", lambda args: register_hook_body(args.get("body")))
    patches.wrap(hooks, "parse_hook_request", on_parse)
    patches.wrap(routes, "parse_hook_request", on_parse)

    on_resolve = _before("request", lambda args: _register_request(args.get("request")))
    patches.wrap(prefetch, "resolve", on_resolve)
    patches.wrap(hook_call, "resolve", on_resolve)

    on_verify = _before(
        "authorization_header", lambda args: register_authorization(args.get("authorization_header"), "jwt")
    )
    patches.wrap(client_auth, "verify_client_jwt", on_verify)
    patches.wrap(authenticate, "verify_client_jwt", on_verify)

    on_client = _before("access_token", lambda args: sensitive(args.get("access_token"), "fhir-token"))
    patches.wrap(fhir_client.FhirClient, "__init__", on_client)

    def on_http(args: dict) -> None:
        register_hook_body(args.get("json"))
        headers = args.get("headers")
        for name, value in headers.items() if hasattr(headers, "items") else ():
            if isinstance(name, str) and name.lower() == "authorization":
                register_authorization(value, "fhir-token")

    patches.wrap(requests.Session, "request", _before("json", on_http))


# --------------------------------------------------------------------------- pytest hooks

_patches = _Patches()
_state: dict = {"root_level": None, "others_collected": 0, "reported": set()}


def pytest_sessionstart(session) -> None:
    root = logging.getLogger()
    _state["root_level"] = root.level
    root.setLevel(logging.DEBUG)
    SESSION.attach(root)
    SESSION.attach_non_propagating()
    _install_registration(_patches)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    final = [item for item in items if item.nodeid.endswith(FINAL_TEST)]
    others = [item for item in items if not item.nodeid.endswith(FINAL_TEST)]
    items[:] = others + final
    _state["others_collected"] = sum(1 for item in others if "test_log_guard.py::" not in item.nodeid)


def pytest_runtest_setup(item) -> None:
    SESSION.current_test = item.nodeid
    SESSION.attach_non_propagating()


def pytest_runtest_teardown(item) -> None:
    SESSION.current_test = f"{item.nodeid} (teardown)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """The final check's own captured log holds the session teardown's records: a leak
    there would be shown in full by pytest. The check names kind and place instead."""
    report = yield
    if item.nodeid.endswith(FINAL_TEST):
        report.sections = [(title, text) for title, text in report.sections if not title.startswith("Captured log")]
    return report


def other_tests_collected() -> int:
    """How many tests outside test_log_guard.py this run collected."""
    return _state["others_collected"]


def mark_final_check(leaks: list[Leak]) -> None:
    """The final test reported these: the end-of-session check reports only what is new."""
    _state["reported"] = set(leaks)


def pytest_sessionfinish(session) -> None:
    SESSION.current_test = "session teardown"
    if _state["root_level"] is None:
        return
    try:
        late = [leak for leak in SESSION.leaks() if leak not in _state["reported"]]
        if late:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_sep("=", "log guard: secrets in the logs", red=True)
                for leak in late:
                    reporter.write_line(str(leak))
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        _patches.undo()
        SESSION.detach()
        logging.getLogger().setLevel(_state["root_level"])
        _state["root_level"] = None
