"""Errors are data: every refusal in the request path is an ApiError with a clear reason.

The Flask app turns an ApiError into `{"error": code, "detail": text}` with its status.
`detail` is written by us, never copied from a library exception, so it cannot leak a
token, a patient identifier or a stack trace.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})  # e.g. Retry-After on a 503

    def body(self) -> dict:
        return {"error": self.error, "detail": self.detail}


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "invalid_request", detail)
