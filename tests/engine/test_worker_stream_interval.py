"""Tokens in the middle of an answer wait up to `stream_interval` and travel to the serving process
in one message; the first token, the end and a refusal go at once. (Every message costs the serving
process CPU that the decode threads share on a small machine: bench.run at one stream.)"""

from qfserve.engine.base import FinishEvent
from qfserve.engine.llamacpp import protocol

from worker_fakes import request, run_on, worker


def tokens_sent(w) -> list[list]:
    """Per message sent: the events in it, tokens as their token id, finishes as their reason."""
    messages = [m for m in w.conn.sent if m[0] == protocol.EVENTS]
    return [[e.reason if isinstance(e, FinishEvent) else e[0] for _, e in m[1]] for m in messages]


def step_and_flush(w, monkeypatch, at: float) -> None:
    monkeypatch.setattr("qfserve.engine.llamacpp.worker.time.monotonic", lambda: at)
    w._step()
    w._flush()


def test_tokens_mid_answer_travel_together_first_and_end_at_once(monkeypatch):
    w = worker(stream_interval=0.5)
    run_on(w, 0, "r0")  # max_tokens 10; the fake sampler answers 7 every step
    w._last_stats = w.stats()  # the start was already reported
    for i in range(10):  # a step every 0.125 s (exact in binary, so the clock has no rounding)
        step_and_flush(w, monkeypatch, at=100.0 + i * 0.125)
    assert tokens_sent(w) == [
        [7],  # the first token alone, at once
        [7] * 4,  # then the tokens of each 0.5 s together
        [7] * 4,
        [7, "length"],  # the tenth token with the end, at once
    ]
    # Each token carries the time it was made, so inter-token latency is measured per step.
    times = [e[5] for m in w.conn.sent if m[0] == protocol.EVENTS for _, e in m[1] if isinstance(e, tuple)]
    assert times == [100.0 + i * 0.125 for i in range(10)]


def test_interval_zero_sends_every_token_alone(monkeypatch):
    w = worker(stream_interval=0.0)
    run_on(w, 0, "r0")
    w._last_stats = w.stats()
    for i in range(10):
        step_and_flush(w, monkeypatch, at=100.0 + i * 0.125)
    assert [len(m) for m in tokens_sent(w)] == [1] * 9 + [2]  # the tenth token with its end


def test_a_refusal_is_not_held_back(monkeypatch):
    w = worker(stream_interval=10.0)
    run_on(w, 0, "r0")
    w._last_stats = w.stats()
    step_and_flush(w, monkeypatch, at=100.0)  # first token: sent
    step_and_flush(w, monkeypatch, at=100.125)  # a token mid-answer: held
    w._refuse(request("bad", [1]), "too long")
    w._flush()
    assert tokens_sent(w) == [[7], [7, "error"]]
