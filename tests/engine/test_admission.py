"""WaitPredictor: the predicted wait for a sequence, from requests in flight and measured speed."""

from qfserve.engine.llamacpp.admission import Flight, WaitPredictor

SPEED = {"step_a": 0.02, "step_b": 0.01, "prefill_tokens_per_s": 1000.0, "out_ratio": 1.0}


def predictor(parallel=2) -> WaitPredictor:
    p = WaitPredictor(parallel)
    p.update(SPEED)
    return p


def test_no_wait_while_a_sequence_is_free():
    p = predictor()
    assert p.wait([Flight(10, 100, 0, started=True)]) == 0.0


def test_the_first_free_sequence_then_one_turn_per_live_request_ahead():
    p = predictor()
    running = [Flight(10, 100, 0, started=True, completion_tokens=40), Flight(10, 100, 0, started=True, completion_tokens=90)]
    step = 0.02 + 0.01 * 2
    assert abs(p.wait(running) - 10 * step) < 1e-9  # the nearer end: 10 tokens left
    waiting = Flight(500, 100, 0)
    turn = 100 * step / 2 + 500 / 1000.0
    assert abs(p.wait(running + [waiting]) - (10 * step + turn)) < 1e-9


def test_background_requests_waiting_do_not_delay_live_ones_but_running_ones_hold_their_sequence():
    p = predictor()
    running = [Flight(10, 100, 0, started=True, completion_tokens=40), Flight(10, 100, 1, started=True, completion_tokens=90)]
    background_waiting = [Flight(10, 1000, 1) for _ in range(5)]
    assert p.wait(running + background_waiting) == p.wait(running) > 0


def test_answers_expected_at_the_fraction_they_have_been_using():
    p = predictor()
    p.update({**SPEED, "out_ratio": 0.25})
    running = [Flight(10, 100, 0, started=True, completion_tokens=5)] * 2
    assert abs(p.wait(running) - 20 * (0.02 + 0.01 * 2)) < 1e-9


def test_requests_between_check_and_generate_count_as_waiting():
    p = predictor(parallel=1)
    running = [Flight(10, 100, 0, started=True, completion_tokens=99)]
    before = p.wait(running)
    p.admitted()
    p.admitted()
    assert p.wait(running) > before
    p.generating()
    p.generating()
    assert p.wait(running) == before


def test_a_pending_request_costs_the_answer_it_asked_for():
    """Before tokenizing, a request's max_tokens is known: a flood of 2-token questions is not
    priced as 512-token answers (which refused them as if minutes of work were queued)."""
    short, unknown = predictor(parallel=1), predictor(parallel=1)
    running = [Flight(10, 100, 0, started=True, completion_tokens=99)]
    for _ in range(10):
        short.admitted(2)
        unknown.admitted()
    assert short.wait(running) < unknown.wait(running) / 50


def test_places_held_at_the_door_count_as_waiting_until_closed():
    p = predictor(parallel=1)
    running = [Flight(10, 100, 0, started=True, completion_tokens=99)]
    before = p.wait(running)
    first, second = object(), object()
    p.opened(first)
    p.opened(second)
    assert p.wait(running) > before
    p.closed(first)
    p.closed(first)  # idempotent
    p.closed(second)
    assert p.wait(running) == before


def test_a_door_place_costs_the_largest_answer_asked_for_lately_and_expires(monkeypatch):
    """Priced low (a 4-token warm-up's answer), places at the door let a flood of 256-token
    requests be admitted as if the queue were shorter, and the last of them waited past the bound."""
    import qfserve.engine.llamacpp.admission as admission

    p = predictor(parallel=1)
    running = [Flight(10, 100, 0, started=True, completion_tokens=99)]
    for asked in (4, 256, 8):
        p.admitted(asked)
        p.generating()
    before = p.wait(running)
    p.opened(object())
    assert abs(p.wait(running) - before - p.cost(admission.TYPICAL_PROMPT, 256)) < 1e-9
    now = admission.time.monotonic()
    monkeypatch.setattr(admission.time, "monotonic", lambda: now + admission.PENDING_SECONDS + 1)
    assert p.wait(running) == before  # a request stuck before admission holds no place for ever
