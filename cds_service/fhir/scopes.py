"""What the CDS client's access token lets this service read: `fhirAuthorization.scope` in
SMART App Launch v1 (`patient/Observation.read`) or v2 (`patient/Observation.rs`) syntax.

CDS Hooks 3.0.0-ballot moves to SMART App Launch STU 2 scopes; clients still send v1 ones,
so both are read. A read (`Type/id`) needs `read` (v1), `*` (v1) or `r` (v2); a search needs
`read`/`*` (v1) or `s` (v2). The context (`patient/`, `user/`, `system/`) is not a limit here:
the FHIR server enforces which patient. A v2 scope with a query restriction
(`patient/Observation.rs?category=laboratory`) does not grant the service's unrestricted
searches, so they are not sent (the card says which data could not be read). Scopes that are
not about resources (`openid`, `launch`, `fhirUser`, `offline_access`...) are ignored. No
scope at all (a 2.0 client that sends none) limits nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/([A-Z][A-Za-z]*|\*)\.([a-z*]+)(\?.*)?$")
_V2 = re.compile(r"^c?r?u?d?s?$")


@dataclass(frozen=True)
class Grants:
    """Interactions granted per resource type (`*`: every type); None: no scope was given."""

    by_type: dict[str, frozenset[str]] | None

    def allows(self, resource_type: str, interaction: str) -> bool:
        """`interaction`: "r" (read `Type/id`) or "s" (search)."""
        if self.by_type is None:
            return True
        return interaction in self.by_type.get(resource_type, frozenset()) | self.by_type.get("*", frozenset())


NO_LIMIT = Grants(None)


def parse_scope(scope: str | None) -> Grants:
    if scope is None:
        return NO_LIMIT
    by_type: dict[str, set[str]] = {}
    for item in scope.split():
        match = _RESOURCE_SCOPE.match(item)
        if match is None or match.group(4):  # not a resource scope, or restricted by a query
            continue
        resource_type, permissions = match.group(2), match.group(3)
        if permissions in ("read", "*"):
            granted = {"r", "s"}
        elif permissions == "write":
            granted = set()
        elif _V2.match(permissions):
            granted = {p for p in permissions if p in "rs"}
        else:
            continue
        by_type.setdefault(resource_type, set()).update(granted)
    return Grants({k: frozenset(v) for k, v in by_type.items()})
