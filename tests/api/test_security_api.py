"""Issue 16 at the HTTP layer, on an in-process app with a trivial engine: body bounds with each
route's error shape, field bounds, the throttle never refusing valid credentials, what anonymous
callers see, the service list's URLs, the memory routes' JSON parser, the token purge schedule.

The real server over loopback (uvicorn's settings, raw sockets, the real model) is in
tests/e2e/test_security_e2e.py.
"""

from __future__ import annotations

import time

import orjson
import pytest
from fastapi.testclient import TestClient

from scripted import ScriptedEngineBase

from qfserve.api.app import create_app
from qfserve.config import load_settings
from qfserve.engine.base import FinishEvent, TokenEvent
from qfserve.store import apps, services, tokens
from qfserve.store.db import Store

CHAT = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/svc"
BODY = {"messages": [{"role": "user", "content": "hi"}]}
LOOPBACK = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.7", 50000)


class OneTokenEngine(ScriptedEngineBase):
    """Answers "ok"; counts tokens with the real model's vocabulary and template (the limits are real)."""

    async def start(self) -> None:
        from qfserve.engine.prompt import ChatPrompt, default_model_path

        self.prompt = ChatPrompt(default_model_path())
        await super().start()

    async def chat_tokens(self, messages, system):
        return self.prompt.chat_tokens(messages, system)

    async def _run(self, request):
        yield TokenEvent(token_id=1, text="ok", token_text="ok")
        yield FinishEvent("stop", len(request.prompt_tokens), 1)

    def generate(self, request):
        return self._run(request)


@pytest.fixture
def world(tmp_path):
    store = Store(tmp_path)
    creds = apps.create_app(store, "a").as_dict()
    app = apps.get_app(store, "a")
    services.publish_service(store, "svc", model="default", profile="ERNIE-Speed-8K", rpm=10000, tpm=10**8)
    token, _, _ = tokens.issue_token(store, app)
    store.close()
    return tmp_path, creds, token


def client_for(data_dir, client=LOOPBACK, **settings) -> TestClient:
    app = create_app(load_settings(data_dir=data_dir, **settings), engine_factory=OneTokenEngine)
    return TestClient(app, raise_server_exceptions=False, client=client)


def token_params(creds, secret=None):
    return {"grant_type": "client_credentials", "client_id": creds["api_key"],
            "client_secret": secret or creds["secret_key"]}


# --- bodies ------------------------------------------------------------------------------------------


def test_oversize_token_body_gets_oauth_shape_at_once(world):
    data_dir, creds, _ = world
    with client_for(data_dir) as client:
        response = client.post("/oauth/2.0/token", params=token_params(creds), content=b"x" * (17 * 1024))
        assert response.status_code == 413
        assert response.json() == {"error_description": "request body too large", "error": "invalid_request"}
        assert response.headers["connection"] == "close"
        # at the limit it is still read
        ok = client.post("/oauth/2.0/token", params=token_params(creds), content=b"{" + b" " * (16 * 1024 - 2) + b"}")
        assert ok.status_code == 200 and ok.json()["access_token"]


def test_oversize_chat_body_gets_qianfan_shape(world):
    data_dir, _, token = world
    with client_for(data_dir, max_chat_body=64 * 1024) as client:
        body = orjson.dumps({**BODY, "system": "s" * 70_000})
        response = client.post(f"{CHAT}?access_token={token}", content=body)
        assert response.status_code == 200
        answer = response.json()
        assert list(answer) == ["error_code", "error_msg", "id"]
        assert answer["error_code"] == 336003
        assert answer["error_msg"] == "the request body is too large: the limit is 65536 bytes"


def test_chunked_oversize_body_is_cut_off(world):
    """No Content-Length: the bytes are counted as they arrive."""
    data_dir, _, token = world

    def chunks():
        for _ in range(100):
            yield b"x" * 4096

    with client_for(data_dir, max_chat_body=64 * 1024) as client:
        response = client.post(f"{CHAT}?access_token={token}", content=chunks())
        assert response.json()["error_code"] == 336003


def test_default_chat_limit_fits_the_largest_profile_escaped(world):
    """507904 CJK characters JSON-escaped as \\uXXXX (what `json.dumps` sends) fit the default chat limit."""
    data_dir, _, token = world
    body = orjson.dumps(BODY)[:-1] + b', "system": "' + b"\\u4f60" * 507_904 + b'"}'
    assert len(body) > 3_000_000
    with client_for(data_dir) as client:
        answer = client.post(f"{CHAT}?access_token={token}", content=body).json()
        assert answer["error_code"] == 336007  # read, parsed and judged on its characters, not refused as bytes


def test_large_bodies_parsed_ahead_keep_the_error_order(world):
    """Over 64 KiB a body is decoded and validated in a thread; its errors still come in their place."""
    data_dir, _, token = world
    many = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 5000
    wrong_roles = orjson.dumps({"messages": many + [{"role": "assistant", "content": "c"}]})
    good = orjson.dumps({"messages": many + [{"role": "user", "content": "c"}], "stream": False})
    assert len(wrong_roles) > 64 * 1024
    with client_for(data_dir) as client:
        nowhere = client.post(f"/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/nosuch?access_token={token}",
                              content=wrong_roles).json()
        assert nowhere["error_code"] == 336005  # the service is checked before the body
        answer = client.post(f"{CHAT}?access_token={token}", content=wrong_roles).json()
        assert answer["error_code"] == 336006
        # valid: it goes on to tokenization (10001 turns are more than 8K tokens)
        assert client.post(f"{CHAT}?access_token={token}", content=good).json()["error_code"] == 336103
        assert client.post(f"{CHAT}?access_token={token}", content=b"{" * 70_000).json()["error_code"] == 336002


def test_other_routes_have_a_small_limit(world):
    data_dir, _, token = world
    with client_for(data_dir) as client:
        response = client.post(f"/qfserve/v1/memory/list?access_token={token}", content=b"[" * 70_000)
        assert response.json()["error_code"] == 336003


# --- fields --------------------------------------------------------------------------------------


def test_user_id_is_capped(world):
    data_dir, _, token = world
    with client_for(data_dir) as client:
        answer = client.post(f"{CHAT}?access_token={token}", json={**BODY, "user_id": "u" * 129}).json()
        assert (answer["error_code"], answer["error_msg"]) == (336003, "the length of user_id can not exceed 128 characters")
        assert client.post(f"{CHAT}?access_token={token}", json={**BODY, "user_id": "u" * 128}).json()["result"] == "ok"
        listed = client.post(f"/qfserve/v1/memory/list?access_token={token}", json={"user_id": "u" * 129}).json()
        assert listed["error_code"] == 336003


def test_user_setting_counts_against_the_input_characters(world):
    data_dir, _, token = world
    with client_for(data_dir) as client:  # ERNIE-Speed-8K: 11200 characters
        answer = client.post(f"{CHAT}?access_token={token}", json={**BODY, "user_setting": "设" * 11_199}).json()
        assert (answer["error_code"], answer["error_msg"]) == (336007, "the max input characters is 11200")


def test_memory_routes_refuse_deep_nesting_as_invalid_json(world):
    data_dir, _, token = world
    with client_for(data_dir, max_small_body=1024 * 1024) as client:
        body = b"[" * 200_000 + b"]" * 200_000
        answer = client.post(f"/qfserve/v1/memory/list?access_token={token}", content=body).json()
        assert (answer["error_code"], answer["error_msg"]) == (336002, "Invalid JSON")


# --- the failed-auth throttle ----------------------------------------------------------------------


def test_valid_token_is_never_refused_after_failures(world):
    data_dir, _, token = world
    with client_for(data_dir, auth_fail_limit=3) as client:
        codes = [client.post(f"{CHAT}?access_token=24.bad.1.2.282335-1", json=BODY).json()["error_code"]
                 for _ in range(5)]
        assert codes == [110, 110, 110, 18, 18]
        assert client.post(f"{CHAT}?access_token={token}", json=BODY).json()["result"] == "ok"


def test_token_endpoint_throttle_keeps_oauth_shape(world):
    data_dir, creds, _ = world
    with client_for(data_dir, auth_fail_limit=2) as client:
        bad = [client.post("/oauth/2.0/token", params=token_params(creds, secret="wrong")) for _ in range(3)]
        assert [r.status_code for r in bad] == [401, 401, 429]
        assert bad[0].json() == {"error": "invalid_client", "error_description": "Client authentication failed"}
        assert bad[2].json() == {"error_description": "too many failed attempts, try again later",
                                 "error": "invalid_client"}
        # The right secret still gets its token.
        good = client.post("/oauth/2.0/token", params=token_params(creds))
        assert good.status_code == 200 and good.json()["access_token"]


# --- what anonymous callers see ------------------------------------------------------------------


def test_readyz_says_only_ready_to_strangers(world):
    data_dir, _, _ = world
    with client_for(data_dir, client=REMOTE) as client:
        response = client.get("/readyz")
        assert response.status_code == 200 and response.json() == {"status": "ready"}
    # Whoever may read /metrics also sees each engine's load (issue 15).
    with client_for(data_dir, client=LOOPBACK) as client:
        response = client.get("/readyz")
        assert response.json()["status"] == "ready" and "models" in response.json()
    with client_for(data_dir, client=REMOTE, metrics_token="s3cret") as client:
        assert "models" not in client.get("/readyz").json()
        assert "models" in client.get("/readyz", headers={"Authorization": "Bearer s3cret"}).json()


def test_metrics_loopback_only_without_a_token(world):
    data_dir, _, _ = world
    with client_for(data_dir, client=REMOTE) as client:
        assert client.get("/metrics").status_code == 403
    with client_for(data_dir, client=LOOPBACK) as client:
        response = client.get("/metrics")
        assert response.status_code == 200 and "qfserve_running_sequences" in response.text


def test_metrics_token_required_when_configured(world):
    data_dir, _, _ = world
    with client_for(data_dir, client=LOOPBACK, metrics_token="s3cret") as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        response = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200 and "qfserve_running_sequences" in response.text
    with client_for(data_dir, client=REMOTE, metrics_token="s3cret") as client:
        assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_service_list_urls_ignore_the_host_header(world):
    data_dir, _, token = world
    with client_for(data_dir, public_url="https://llm.example.com/") as client:
        answer = client.post(f"/wenxinworkshop/service/list?access_token={token}", json={},
                             headers={"Host": "evil.example.net"}).json()
        urls = [s["url"] for s in answer["result"]["custom"]]
        assert urls == ["https://llm.example.com/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/svc"]
    with client_for(data_dir, port=8999) as client:
        answer = client.post(f"/wenxinworkshop/service/list?access_token={token}", json={},
                             headers={"Host": "evil.example.net"}).json()
        assert answer["result"]["custom"][0]["url"].startswith("http://127.0.0.1:8999/")


# --- housekeeping ------------------------------------------------------------------------------------


def test_expired_tokens_are_purged_on_a_schedule(world):
    data_dir, _, token = world
    store = Store(data_dir)
    # Expired 8 days ago: past the week an expired token is kept (so its caller hears 111, not 110).
    old, _, _ = tokens.issue_token(store, apps.get_app(store, "a"), ttl=1, now=time.time() - 8 * 86400)
    recent, _, _ = tokens.issue_token(store, apps.get_app(store, "a"), ttl=1, now=time.time() - 10)
    assert store.connection().execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 3
    with client_for(data_dir, token_purge_interval=0.05):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if store.connection().execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 2:
                break
            time.sleep(0.05)
    assert tokens.lookup_token(store, old) is None
    assert tokens.lookup_token(store, recent) is not None  # expired, still known: 111
    assert tokens.lookup_token(store, token) is not None
    store.close()


def test_shutdown_waits_for_a_purge_still_running_before_the_store_closes(world, monkeypatch):
    """The purge runs in a thread; cancelling its task does not stop the thread. Closing SQLite
    under its running statement crashed the test process (a segfault in CI)."""
    import threading

    from qfserve.store.db import Store as RealStore

    data_dir, _, _ = world
    events = []
    running = threading.Event()

    def slow_purge(store):
        running.set()
        time.sleep(0.5)
        events.append("purge done")
        return 0

    real_close = RealStore.close

    def recording_close(self):
        events.append("store closed")
        real_close(self)

    monkeypatch.setattr(tokens, "purge_expired", slow_purge)
    monkeypatch.setattr(RealStore, "close", recording_close)
    with client_for(data_dir):
        assert running.wait(10)
    assert events[:2] == ["purge done", "store closed"]


def test_limits_by_route():
    from qfserve.api.bodies import BodyLimits

    limits = BodyLimits(chat=3, token=2, other=1)
    assert limits.for_path("/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/x") == 3
    assert limits.for_path("/v2/chat/completions") == 3
    assert limits.for_path("/oauth/2.0/token") == 2
    assert limits.for_path("/qfserve/v1/memory/list") == limits.for_path("/anything") == 1
