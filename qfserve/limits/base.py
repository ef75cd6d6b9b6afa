"""The limiter interface: a request is admitted against its app's own quotas (QPS, requests a day)
and against the (service, app) minute budget (RPM, TPM); tokens are settled when it is done.

Two backends implement it: in-process (`qfserve.limits.local`) and Redis (`qfserve.limits.redis`),
the latter so that several qfserve processes share one budget.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass

from qfserve.limits.days import QuotaCalendar
from qfserve.protocol.errors import Code, QianfanError

log = logging.getLogger(__name__)


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


def retry_after_header(delay: float) -> str:
    # Whole seconds, rounded up (to the ms first, against float noise): a client that waits that
    # long finds the window open.
    return str(max(1, math.ceil(round(delay, 3))))


class LimitRefused(QianfanError):
    """A limit's refusal. `reason` names the limit (a metrics label: two limits answer 18);
    `retry_after` is the seconds until it admits again, when that is known."""

    def __init__(self, code: Code, reason: str, retry_after: float | None = None, budget: Budget | None = None):
        headers = budget.headers() if budget is not None else {}
        if retry_after is not None:
            headers["Retry-After"] = retry_after_header(retry_after)
        super().__init__(code, headers=headers)
        self.reason = reason
        self.retry_after = retry_after
        self.budget = budget


@dataclass(frozen=True)
class AppQuota:
    """An app's own limits, over all the services it calls. 0 means unlimited."""

    app_id: int
    qps: int = 0
    daily: int = 0

    @property
    def unlimited(self) -> bool:
        return self.qps <= 0 and self.daily <= 0


class Reservation(abc.ABC):
    """An admitted request. `budget` is what remained right after admission."""

    budget: Budget

    @abc.abstractmethod
    async def settle(self, total_tokens: int) -> Budget:
        """Replace the tokens counted for this request (first the admission-time prompt) with
        `total_tokens`. May be called again with a larger total (work done after the answer)
        while the request is still in the window; after that it changes nothing."""


class AppAdmission:
    """A request counted against its app's quotas. The base class counted nothing (no quotas)."""

    async def release(self) -> None:
        """Give back what admission counted: the request was refused further on."""


_NOTHING_COUNTED = AppAdmission()


class Limiter(abc.ABC):
    calendar: QuotaCalendar

    @abc.abstractmethod
    async def admit(self, key: str, rpm: int, tpm: int, prompt_tokens: int) -> Reservation:
        """Count one request and `prompt_tokens` against `key`'s minute window.

        Raises LimitRefused 336501 (RPM) or 336502 (TPM), with the budget and Retry-After, when the
        window is spent; a refused request consumes nothing.
        """

    async def check_requests(self, key: str, rpm: int, tpm: int) -> None:
        """Raise LimitRefused 336501 (with the budget and Retry-After) if `key`'s window is already
        full. Counts nothing: a cheap early refusal, made before a request costs any work (tokenizing,
        memory recall); `admit` still decides atomically."""

    @abc.abstractmethod
    async def _admit_app(self, quota: AppQuota) -> AppAdmission:
        """Count one request against the app's QPS window and today's count (backend part)."""

    async def admit_app(self, quota: AppQuota) -> AppAdmission:
        """Count one request against the app's quotas.

        Raises LimitRefused 17 (daily count spent: Retry-After is the next local midnight) or
        18 (QPS window full); the daily quota is checked first, so a spent day never answers the
        retryable 18. A refused request consumes nothing.
        """
        if quota.unlimited:
            return _NOTHING_COUNTED
        return await self._admit_app(quota)

    async def admit_request(self, key: str, rpm: int, tpm: int, prompt_tokens: int,
                            quota: AppQuota | None = None) -> Reservation:
        """`admit_app`, then `admit`; a request the service budget refuses is given back to the app's quotas."""
        admission = await self.admit_app(quota) if quota is not None else _NOTHING_COUNTED
        try:
            return await self.admit(key, rpm, tpm, prompt_tokens)
        except QianfanError:
            try:
                await admission.release()
            except Exception as exc:  # best effort: the refusal is what the client must get
                log.warning("could not give back a refused request's quota: %r", exc)
            raise

    async def close(self) -> None:
        return None


def limit_key(api_path: str, app_id: int) -> str:
    return f"{api_path}:{app_id}"
