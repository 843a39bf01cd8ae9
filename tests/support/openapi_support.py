"""The HTTP contract (openapi.yaml) as JSON Schema validators for the tests.

OpenAPI 3.1 schemas are JSON Schema 2020-12, so a schema inside the document is checked
with jsonschema's Draft 2020-12 validator against a registry holding the whole document:
`$ref: "#/components/..."` resolves as it does for any OpenAPI tool.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from support.paths import REPO_ROOT

CONTRACT_PATH = REPO_ROOT / "openapi.yaml"
CONTRACT_URI = "urn:hfs-cds-service:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@functools.cache
def load_contract() -> dict:
    """openapi.yaml as a dict (cached; callers must not modify it — copy first)."""
    return yaml.safe_load(CONTRACT_PATH.read_text(encoding="utf-8"))


def contract_copy() -> dict:
    return json.loads(json.dumps(load_contract()))


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(load_contract(), default_specification=DRAFT202012)
    return Registry().with_resource(CONTRACT_URI, resource)


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validator_at(*parts: str) -> Draft202012Validator:
    """A validator for the schema at this JSON pointer path inside openapi.yaml."""
    return Draft202012Validator(
        {"$ref": f"{CONTRACT_URI}#/{_pointer(*parts)}"},
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def component_validator(name: str) -> Draft202012Validator:
    return validator_at("components", "schemas", name)


def _resolve(node: dict) -> dict:
    """Follow a `$ref` to a reusable component (responses) inside the document."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = load_contract()
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def documented_response(path: str, method: str, status: int) -> tuple[dict, tuple[str, ...]]:
    """The response object of path+method+status, and the JSON pointer parts to it."""
    operation = load_contract()["paths"][path][method.lower()]
    responses = operation["responses"]
    key = str(status)
    assert key in responses, f"{method.upper()} {path} does not document status {status}"
    node = responses[key]
    parts: tuple[str, ...] = ("paths", path, method.lower(), "responses", key)
    if "$ref" in node:
        ref = node["$ref"]
        parts = tuple(p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/"))
        node = _resolve(node)
    return node, parts


def response_errors(
    path: str, method: str, status: int, body: Any, content_type: str = "application/json"
) -> list[str]:
    """Why `body` is not what openapi.yaml documents for this response (empty: it is)."""
    node, parts = documented_response(path, method, status)
    content = node.get("content")
    if not content:
        return [] if body in (None, b"", "") else [f"{status} documents no body, got {body!r}"]
    media = content_type.split(";")[0].strip()
    if media not in content:
        return [f"{status} documents {sorted(content)}, response is {media}"]
    validator = validator_at(*parts, "content", media, "schema")
    return [_describe(e) for e in validator.iter_errors(body)]


def assert_documented(path: str, method: str, response) -> None:
    """A Flask test-client response conforms to openapi.yaml: status, media type, body."""
    status = response.status_code
    if response.data and response.mimetype == "text/html":
        body = response.get_data(as_text=True)  # a page for people (the evidence page)
    elif response.data:
        body = response.get_json(silent=True)
        assert body is not None, f"{method} {path} -> {status}: body is not JSON: {response.data[:200]!r}"
    else:
        body = None
    errors = response_errors(path, method, status, body, response.content_type or "")
    assert not errors, f"{method.upper()} {path} -> {status} breaks the contract:\n" + "\n".join(errors)


def schema_errors(component: str, instance: Any) -> list[str]:
    return [_describe(e) for e in component_validator(component).iter_errors(instance)]


def documented_operations() -> set[tuple[str, str]]:
    """(path, METHOD) for every operation in openapi.yaml."""
    return {
        (path, method.upper())
        for path, item in load_contract()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def _describe(error: ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"at {where}: {error.message[:300]}"
