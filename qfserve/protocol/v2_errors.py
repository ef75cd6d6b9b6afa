"""The v2 surface's errors: every v1 code's twin, as Qianfan v2 (OpenAI-shaped) answers it.

v2 errors carry a real HTTP status and the body `{"error": {"code", "message", "type"}, "id"}`,
`code` being one of v2's strings (Qianfan's v2 error page: `malformed_json`, `invalid_messages`,
`characters_too_long`, `tokens_too_long`, `invalid_argument`, `invalid_iam_token`,
`rpm_rate_limit_exceeded`, `tpm_rate_limit_exceeded`, `internal_error`...). The domain keeps raising
`QianfanError` with v1 codes; `twin_of` turns one into its v2 answer, so both surfaces tell the same
story. Errors that only v2 has (a missing `model`, a feature not built yet) are raised as `V2Error`.
"""

from __future__ import annotations

from dataclasses import dataclass

from qfserve.protocol.errors import Code, QianfanError

# The error `type`s Qianfan v2 uses.
INVALID_REQUEST = "invalid_request_error"
ACCESS_DENIED = "access_denied"
RATE_LIMITED = "rate_limit_exceeded"
SERVER_ERROR = "server_error"


@dataclass(frozen=True)
class Twin:
    status: int
    type: str
    code: str
    message: str | None = None  # replaces the v1 table's fixed message; None keeps it


TWINS: dict[Code, Twin] = {
    Code.UNKNOWN: Twin(500, SERVER_ERROR, "internal_error"),
    Code.SERVICE_UNAVAILABLE: Twin(503, SERVER_ERROR, "service_unavailable"),
    Code.UNSUPPORTED_METHOD: Twin(404, INVALID_REQUEST, "invalid_url", "Unsupported API path"),
    Code.REQUEST_LIMIT: Twin(429, RATE_LIMITED, "cluster_rate_limit_exceeded"),
    Code.NO_PERMISSION: Twin(403, ACCESS_DENIED, "no_permission", "This API key may not call this model"),
    Code.IAM_FAILED: Twin(401, ACCESS_DENIED, "invalid_iam_token"),
    Code.DAILY_LIMIT: Twin(429, RATE_LIMITED, "daily_rate_limit_exceeded"),
    Code.QPS_LIMIT: Twin(429, RATE_LIMITED, "user_rate_limit_exceeded"),
    Code.INVALID_PARAMETER: Twin(401, ACCESS_DENIED, "invalid_iam_token",
                                 "Missing API key: send the header `Authorization: Bearer <API key>`"),
    Code.TOKEN_INVALID: Twin(401, ACCESS_DENIED, "invalid_iam_token", "API key or bearer token is invalid"),
    Code.TOKEN_EXPIRED: Twin(401, ACCESS_DENIED, "invalid_iam_token", "Bearer token expired"),
    Code.INTERNAL: Twin(500, SERVER_ERROR, "internal_error"),
    Code.INVALID_ARGUMENT: Twin(400, INVALID_REQUEST, "invalid_argument"),
    Code.INVALID_JSON: Twin(400, INVALID_REQUEST, "malformed_json"),
    Code.PARAM_OUT_OF_RANGE: Twin(400, INVALID_REQUEST, "invalid_argument"),
    Code.API_NOT_EXIST: Twin(404, INVALID_REQUEST, "invalid_model", "The model does not exist"),
    Code.MESSAGES_STRUCTURE: Twin(400, INVALID_REQUEST, "invalid_messages"),
    Code.INPUT_CHARS_TOO_LONG: Twin(400, INVALID_REQUEST, "characters_too_long"),
    Code.OVERLOADED: Twin(503, SERVER_ERROR, "server_overloaded"),
    Code.INVALID_HTTP_METHOD: Twin(405, INVALID_REQUEST, "method_not_supported"),
    Code.PROMPT_TOKENS_TOO_LONG: Twin(400, INVALID_REQUEST, "tokens_too_long"),
    Code.RATE_LIMIT_RPM: Twin(429, RATE_LIMITED, "rpm_rate_limit_exceeded"),
    Code.RATE_LIMIT_TPM: Twin(429, RATE_LIMITED, "tpm_rate_limit_exceeded"),
}

# When a 429 comes without its own estimate: the limit windows are a minute, the throttle's similar.
DEFAULT_RETRY_AFTER = 1


class V2Error(Exception):
    """An error as the v2 wire answers it."""

    def __init__(self, status: int, type: str, code: str, message: str, *, retry_after: float | None = None):
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{status} {code}: {message}")

    def body(self, request_id: str) -> dict:
        return {"error": {"code": self.code, "message": self.message, "type": self.type}, "id": request_id}

    def headers(self) -> dict[str, str]:
        if self.status != 429 and self.retry_after is None:
            return {}
        seconds = self.retry_after if self.retry_after is not None else DEFAULT_RETRY_AFTER
        return {"Retry-After": str(max(1, int(seconds + 0.999)))}  # whole seconds, rounded up


def twin_of(error: QianfanError) -> V2Error:
    twin = TWINS.get(error.code, TWINS[Code.INTERNAL])  # Code is an IntEnum: plain ints find their twin
    message = error.message if error.detailed or twin.message is None else twin.message
    if error.param and not error.detailed:
        message = f"{message}: {error.param}"
    return V2Error(twin.status, twin.type, twin.code, message, retry_after=error.retry_after)


def invalid_argument(message: str) -> V2Error:
    return V2Error(400, INVALID_REQUEST, "invalid_argument", message)


def unsupported(field: str, what: str) -> V2Error:
    """A request feature qfserve does not offer (yet): refused by name rather than ignored."""
    return invalid_argument(f"`{field}` is not supported: {what}")
