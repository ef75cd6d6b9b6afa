"""Admission by predicted wait: refuse at once (336100) a request that could not start in time.

The HTTP process decides, from what it already knows, without asking the worker: the requests in
flight (their prompt and `max_tokens`, whether they started, how many tokens they have), and the
worker's measured speed (speed.py, sent with every step). A live request arriving now starts when
a sequence is free for it:
- with a free sequence and nobody waiting ahead, at once;
- otherwise after the first running sequence ends (its expected remaining tokens times the step
  time), plus one "turn" per live request waiting ahead of it beyond the free sequences: that
  request's expected answer at the engine's full throughput, plus its prefill.
Expected answers are `max_tokens` times the fraction answers have been using (1 until some end).
Background requests (priority > 0) wait behind every live one, so those waiting add nothing to a
live request's wait; running ones hold their sequence like any other.

Requests that passed `check_admission` but are still being tokenized count as waiting ahead, for
a few seconds (`PENDING_SECONDS`), at the cost of the answer they asked for (`max_tokens`, known
before tokenizing) and an average prompt: without them a flood that arrives all at once would pass
the check together.

Before that, at the door (`opened`, before the body is parsed and the caller authenticated), a
request holds a place at the cost of the largest answer asked for lately, until `check_admission`
takes it over or it ends (`closed`). A flood then is refused where it arrives: the first requests of a burst take
the places, and the rest are refused in the same turn of the event loop, each for the price of a
dictionary look-up rather than an authentication and a service look-up in the database.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

PENDING_SECONDS = 5.0
# Until a request has been seen, a pending one is assumed to be this big.
TYPICAL_PROMPT = 64
TYPICAL_MAX_TOKENS = 512
RECENT = 32  # admitted requests whose asked-for answers price a place at the door


@dataclass(eq=False)
class Flight:
    """What admission needs to know about one request in flight."""

    prompt_tokens: int
    max_tokens: int
    priority: int
    started: bool = False
    completion_tokens: int = 0


class WaitPredictor:
    def __init__(self, parallel: int) -> None:
        self.parallel = parallel
        self.step_a = 0.005
        self.step_b = 0.005
        self.prefill_tokens_per_s = 500.0
        self.out_ratio = 1.0
        self._pending: deque[tuple[float, int]] = deque()  # (admitted at, max_tokens)
        self._door: dict[object, float] = {}  # places held at the door: ticket -> opened at
        self._mean_prompt = 0.0
        self._recent_max_tokens: deque[int] = deque(maxlen=RECENT)

    def update(self, stats: dict) -> None:
        """The worker's latest speed figures (speed.StepTimer.rates)."""
        self.step_a = stats.get("step_a", self.step_a)
        self.step_b = stats.get("step_b", self.step_b)
        self.prefill_tokens_per_s = max(1.0, stats.get("prefill_tokens_per_s", self.prefill_tokens_per_s))
        self.out_ratio = stats.get("out_ratio", self.out_ratio)

    # -- requests between check_admission and generate ----------------------------------------

    def opened(self, ticket: object) -> None:
        """A request reached the door: it holds a place until `closed` (or PENDING_SECONDS)."""
        self._door[ticket] = time.monotonic()

    def closed(self, ticket: object) -> None:
        self._door.pop(ticket, None)

    def admitted(self, max_tokens: int | None = None) -> None:
        max_tokens = max_tokens or TYPICAL_MAX_TOKENS
        self._recent_max_tokens.append(max_tokens)
        self._pending.append((time.monotonic(), max_tokens))

    def generating(self) -> None:
        if self._pending:
            self._pending.popleft()

    def _pending_costs(self) -> list[float]:
        expired = time.monotonic() - PENDING_SECONDS
        while self._pending and self._pending[0][0] < expired:
            self._pending.popleft()
        prompt = self._mean_prompt or TYPICAL_PROMPT
        costs = [self.cost(prompt, max_tokens) for _, max_tokens in self._pending]
        while self._door:  # in opening order: a request stuck before admission holds no place for ever
            ticket, opened = next(iter(self._door.items()))
            if opened >= expired:
                break
            del self._door[ticket]
        if self._door:
            # Priced at the largest answer recently asked for: a place priced low lets the requests
            # behind it be admitted as if it were not there, and then wait past the bound.
            door_max_tokens = max(self._recent_max_tokens, default=TYPICAL_MAX_TOKENS)
            costs += [self.cost(prompt, door_max_tokens)] * len(self._door)
        return costs

    # -- the prediction -----------------------------------------------------------------------

    def cost(self, prompt_tokens: int, max_tokens: int) -> float:
        """Seconds of the engine's full throughput one request's answer and prefill take."""
        full_step = self.step_a + self.step_b * self.parallel
        return max_tokens * self.out_ratio * full_step / self.parallel + prompt_tokens / self.prefill_tokens_per_s

    def wait(self, flights) -> float:
        """Predicted seconds before a live request arriving now would start, behind `flights`
        (in arrival order) and the requests still between check_admission and generate."""
        full_step = self.step_a + self.step_b * self.parallel
        remaining: list[float] = []
        ahead_costs: list[float] = []
        for flight in flights:
            if flight.started or flight.completion_tokens:
                expected = flight.max_tokens * self.out_ratio - flight.completion_tokens
                remaining.append(max(1.0, expected))
            elif flight.priority == 0:
                ahead_costs.append(self.cost(flight.prompt_tokens, flight.max_tokens))
        costs = ahead_costs + self._pending_costs()
        free = self.parallel - len(remaining)
        if len(costs) < free:
            return 0.0
        # The first waiting requests take the free sequences; the new one waits for the rest.
        beyond = sum(costs[max(0, free):])
        first_free = min(remaining) * full_step if len(remaining) >= self.parallel else 0.0
        return first_free + beyond

    def observed_cost(self, prompt_tokens: int, max_tokens: int) -> None:
        """A live request was sent: its prompt feeds the average assumed for pending ones."""
        self._mean_prompt = prompt_tokens if self._mean_prompt == 0.0 else 0.9 * self._mean_prompt + 0.1 * prompt_tokens
