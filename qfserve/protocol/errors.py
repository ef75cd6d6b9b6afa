"""The Qianfan error table: every code the server can answer, with its exact wire message.

A domain error is one exception type, `QianfanError`, raised anywhere and turned into the wire
body in exactly one place (`qfserve.api.errors`). See ../shared/spec/qianfan-wire.md §3.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    UNKNOWN = 1
    SERVICE_UNAVAILABLE = 2
    UNSUPPORTED_METHOD = 3
    REQUEST_LIMIT = 4
    NO_PERMISSION = 6
    IAM_FAILED = 14
    DAILY_LIMIT = 17
    QPS_LIMIT = 18
    INVALID_PARAMETER = 100
    TOKEN_INVALID = 110
    TOKEN_EXPIRED = 111
    INTERNAL = 336000
    INVALID_ARGUMENT = 336001
    INVALID_JSON = 336002
    PARAM_OUT_OF_RANGE = 336003
    API_NOT_EXIST = 336005
    MESSAGES_STRUCTURE = 336006
    INPUT_CHARS_TOO_LONG = 336007
    OVERLOADED = 336100
    INVALID_HTTP_METHOD = 336101
    PROMPT_TOKENS_TOO_LONG = 336103
    RATE_LIMIT_RPM = 336501
    RATE_LIMIT_TPM = 336502


# Fixed messages. Codes whose message carries a detail (336003, 336006, 336007) take it at raise time.
MESSAGES: dict[Code, str] = {
    Code.UNKNOWN: "Unknown error",
    Code.SERVICE_UNAVAILABLE: "Service temporarily unavailable",
    Code.UNSUPPORTED_METHOD: "Unsupported openapi method",
    Code.REQUEST_LIMIT: "Open api request limit reached",
    Code.NO_PERMISSION: "No permission to access data",
    Code.IAM_FAILED: "IAM Certification failed",
    Code.DAILY_LIMIT: "Open api daily request limit reached",
    Code.QPS_LIMIT: "Open api qps request limit reached",
    Code.INVALID_PARAMETER: "Invalid parameter",
    Code.TOKEN_INVALID: "Access token invalid or no longer valid",
    Code.TOKEN_EXPIRED: "Access token expired",
    Code.INTERNAL: "Internal error",
    Code.INVALID_ARGUMENT: "Invalid Argument",
    Code.INVALID_JSON: "Invalid JSON",
    Code.API_NOT_EXIST: "API name not exist",
    Code.OVERLOADED: "Server is overloaded, please try again later",
    Code.INVALID_HTTP_METHOD: "Invalid HTTP Method",
    Code.PROMPT_TOKENS_TOO_LONG: "Prompt tokens too long",
    Code.RATE_LIMIT_RPM: "Rate limit reached for RPM",
    Code.RATE_LIMIT_TPM: "Rate limit reached for TPM",
}

# The codes the official SDK retries (with backoff) by resending the same request (qianfan-wire.md §3).
SDK_RETRIED_CODES = frozenset({2, 15, 18, 336100, 336501, 336502})

MSG_ODD_LENGTH = "the length of messages must be an odd number"
MSG_ODD_ROLE = "the role of message with odd index in the messages must be assistant"
MSG_EVEN_ROLE = "the role of message with even index in the messages must be user or function"


class QianfanError(Exception):
    """A business error: answered as HTTP 200 with `{"error_code","error_msg","id"}` on v1.

    `headers` travel with the body as HTTP headers (a limit's refusal carries `Retry-After` and
    the `X-Ratelimit-*` budget). The v2 surface answers the same error through its twin
    (`protocol/v2_errors.py`), which can say more: `param` names the offending field, and
    `retry_after` (seconds) becomes a `Retry-After` header. None of them changes the v1 body.
    """

    def __init__(self, code: Code | int, message: str | None = None, *, headers: dict[str, str] | None = None,
                 param: str | None = None, retry_after: float | None = None):
        self.code = int(code)
        self.message = message if message is not None else MESSAGES.get(Code(code), "Unknown error")
        self.headers = dict(headers or {})
        self.param = param
        self.retry_after = retry_after
        super().__init__(f"{self.code}: {self.message}")

    @property
    def detailed(self) -> bool:
        """Whether the raiser gave its own message rather than the table's fixed one."""
        return self.message != MESSAGES.get(self.code)

    def body(self, request_id: str) -> dict:
        return {"error_code": self.code, "error_msg": self.message, "id": request_id}


def out_of_range(message: str) -> QianfanError:
    return QianfanError(Code.PARAM_OUT_OF_RANGE, message)


class OAuthError(Exception):
    """A token-endpoint failure: OAuth-shaped body, HTTP 401 (qianfan-wire.md §2).

    Baidu's field order differs between failures, so each carries its own.
    """

    def __init__(self, error: str, description: str, error_first: bool = False, status: int = 401):
        self.error = error
        self.description = description
        self.error_first = error_first
        self.status = status
        super().__init__(f"{error}: {description}")

    def body(self) -> dict:
        if self.error_first:
            return {"error": self.error, "error_description": self.description}
        return {"error_description": self.description, "error": self.error}


UNKNOWN_CLIENT = ("invalid_client", "unknown client id")
BAD_SECRET = ("invalid_client", "Client authentication failed", True)
MISSING_PARAMETER = ("invalid_request", "The request is missing a required parameter")
