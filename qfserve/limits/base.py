"""The limiter interface: admit a request against a (service, app) budget, settle tokens when done.

Two backends implement it: in-process (`qfserve.limits.local`) and Redis (`qfserve.limits.redis`),
the latter so that several qfserve processes share one budget.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """What the X-Ratelimit-* headers report."""

    limit_requests: int
    limit_tokens: int
    remaining_requests: int
    remaining_tokens: int

    def headers(self) -> dict[str, str]:
        return {
            "X-Ratelimit-Limit-Requests": str(self.limit_requests),
            "X-Ratelimit-Limit-Tokens": str(self.limit_tokens),
            "X-Ratelimit-Remaining-Requests": str(max(0, self.remaining_requests)),
            "X-Ratelimit-Remaining-Tokens": str(max(0, self.remaining_tokens)),
        }


class Reservation(abc.ABC):
    """An admitted request. `budget` is what remained right after admission."""

    budget: Budget

    @abc.abstractmethod
    async def settle(self, total_tokens: int) -> Budget:
        """Replace the tokens counted for this request (first the admission-time prompt) with
        `total_tokens`. May be called again with a larger total (work done after the answer)
        while the request is still in the window; after that it changes nothing."""


class Limiter(abc.ABC):
    @abc.abstractmethod
    async def admit(self, key: str, rpm: int, tpm: int, prompt_tokens: int) -> Reservation:
        """Count one request and `prompt_tokens` against `key`'s minute window.

        Raises QianfanError 336501 (RPM) or 336502 (TPM) when the window is spent; a refused request
        consumes nothing.
        """

    async def check_requests(self, key: str, rpm: int) -> None:
        """Raise QianfanError 336501 if `key`'s window is already full. Counts nothing: a cheap
        early refusal, made before a request costs any work; `admit` still decides atomically."""

    async def close(self) -> None:
        return None


def limit_key(api_path: str, app_id: int) -> str:
    return f"{api_path}:{app_id}"
