"""Admission at the door (api/door.py): a saturated engine's path is refused before authentication,
and a place held at the door is handed to the route's admission check or given back.

A scripted engine stands in for the predictor (its own tests: tests/engine/test_admission.py); the
real engine meets the door in tests/e2e/test_engine_e2e.py's flood.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from qfserve.api import door as door_module
from qfserve.api.app import create_app
from qfserve.api.door import AdmissionDoor
from qfserve.config import load_settings
from qfserve.engine.base import AdmissionTicket, EngineOverloaded, FinishEvent, TokenEvent
from qfserve.protocol.errors import Code, QianfanError
from scripted import ScriptedEngineBase, published

CHAT = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/"
BODY = {"messages": [{"role": "user", "content": "hi"}]}


class Place(AdmissionTicket):
    def __init__(self, engine: "DoorEngine"):
        self.engine = engine

    def release(self) -> None:
        self.engine.places.discard(self)


class DoorEngine(ScriptedEngineBase):
    """Full when `saturated`; records the places it holds and what admission was handed."""

    saturated = False
    last: "DoorEngine | None" = None

    def __init__(self, path: str):
        super().__init__(path)
        self.places: set[Place] = set()
        self.handed: list = []
        DoorEngine.last = self

    def reserve(self) -> Place:
        if DoorEngine.saturated:
            raise EngineOverloaded()
        place = Place(self)
        self.places.add(place)
        return place

    def check_admission(self, max_tokens=None, ticket=None) -> None:
        self.handed.append(ticket)
        self.places.discard(ticket)

    def generate(self, request):
        async def run():
            yield TokenEvent(token_id=1, text="ok", token_text="ok", logprob=-0.1)
            yield FinishEvent("stop", len(request.prompt_tokens), 1)
        return run()


@pytest.fixture
def client(tmp_path):
    DoorEngine.saturated = False
    token = published(tmp_path, rpm=1000, tpm=100000)
    app = create_app(load_settings(data_dir=tmp_path), engine_factory=DoorEngine)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.token = token
        yield test_client


def test_a_saturated_engine_refuses_at_the_door_before_the_caller_is_known(client):
    """An unknown token would get 110 from the route: at the door it is never looked up."""
    DoorEngine.saturated = True
    answer = client.post(CHAT + "svc", params={"access_token": "not-a-token"}, json=BODY).json()
    assert answer["error_code"] == 336100
    assert answer["error_msg"] == "Server is overloaded, please try again later"
    assert answer["id"].startswith("as-")
    assert DoorEngine.last.handed == []  # the route never ran

    DoorEngine.saturated = False  # and the server goes on serving
    served = client.post(CHAT + "svc", params={"access_token": client.token}, json=BODY).json()
    assert served["result"] == "ok"


def test_the_place_held_at_the_door_is_handed_to_admission(client):
    answer = client.post(CHAT + "svc", params={"access_token": client.token}, json=BODY).json()
    assert answer["result"] == "ok"
    engine = DoorEngine.last
    assert len(engine.handed) == 1 and isinstance(engine.handed[0], Place)
    assert engine.places == set()


def test_a_request_refused_before_admission_gives_its_place_back(client):
    answer = client.post(CHAT + "svc", params={"access_token": "not-a-token"}, json=BODY).json()
    assert answer["error_code"] == 110
    engine = DoorEngine.last
    assert engine.handed == [] and engine.places == set()


def test_paths_and_methods_the_door_does_not_know_go_to_the_route(client):
    DoorEngine.saturated = True
    # No engine has served this path: the route answers (after authentication), not the door.
    unknown = client.post(CHAT + "nosuch", params={"access_token": client.token}, json=BODY).json()
    assert unknown["error_code"] == 336005
    wrong_method = client.get(CHAT + "svc", params={"access_token": client.token}).json()
    assert wrong_method["error_code"] == 336101


# ---- a burst: requests that will wait anyway let the refusals go first ---------------------------

class BurstServing:
    """The first request gets a place with `predicted_wait`; every later one is refused."""

    def __init__(self, predicted_wait: float):
        self.predicted_wait = predicted_wait
        self.calls = 0

    def reserve(self, api_path):
        self.calls += 1
        if self.calls > 1:
            raise QianfanError(Code.OVERLOADED)
        place = AdmissionTicket()
        place.predicted_wait = self.predicted_wait
        return place


async def burst(predicted_wait: float, refusals: int, gap: float) -> list[str]:
    """One request admitted at the door, then `refusals` more, `gap` seconds apart: the order in
    which they got past the door (admitted: reached the route; refused: answer sent)."""
    order: list[str] = []

    async def route(scope, receive, send):
        order.append("admitted")

    door = AdmissionDoor(route)
    app = SimpleNamespace(state=SimpleNamespace(serving=BurstServing(predicted_wait)))
    scope = {"type": "http", "method": "POST", "path": CHAT + "svc", "app": app, "headers": []}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def refused_send(message):
        if message["type"] == "http.response.body":
            order.append("refused")

    async def refusals_in_turn():
        for _ in range(refusals):
            await door(dict(scope), receive, refused_send)
            await asyncio.sleep(gap)

    admitted = asyncio.create_task(door(dict(scope), receive, refused_send))
    await asyncio.sleep(0)
    await refusals_in_turn()
    await admitted
    return order


async def test_a_request_that_will_wait_anyway_lets_the_bursts_refusals_go_first(monkeypatch):
    monkeypatch.setattr(door_module, "QUIET_SECONDS", 0.05)  # a loaded CI machine's loop stalls less than this
    assert await burst(predicted_wait=5.0, refusals=10, gap=0.005) == ["refused"] * 10 + ["admitted"]


async def test_a_request_that_starts_at_once_goes_first(monkeypatch):
    monkeypatch.setattr(door_module, "QUIET_SECONDS", 0.05)
    assert await burst(predicted_wait=0.0, refusals=3, gap=0.005) == ["admitted"] + ["refused"] * 3


async def test_it_yields_no_longer_than_its_predicted_wait(monkeypatch):
    monkeypatch.setattr(door_module, "QUIET_SECONDS", 0.05)
    order = await burst(predicted_wait=0.2, refusals=40, gap=0.02)  # refusals for about 0.8 s
    assert order.index("admitted") < 30
