"""Two gateways on one database and one Redis behave as one server (issue 11).

One RPM budget under concurrent load; a change made through the CLI (service publish, app revoke,
engine add) served by both within a second; kill -9 of one gateway mid-stream loses no committed
row, and the other keeps serving. On PostgreSQL (the deployment shape: `database_url` in the data
dir's qfserve.toml, read by the gateways and the CLI alike) and on one shared SQLite file.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import requests
from conftest import cli, cli_json, start_server, stop_server
from limits.conftest import redis_url  # noqa: F401  (the private redis-server fixture)
from pgfixtures import new_database

from remote.scripted import ScriptedReplica

USER = "scale-user"
QUESTION = {"messages": [{"role": "user", "content": "Say hello."}], "max_output_tokens": 2}


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def pair(request, tmp_path_factory, redis_url):  # noqa: F811
    data = tmp_path_factory.mktemp("shared")
    drop = None
    if request.param == "postgresql":
        url, drop = new_database()
        (data / "qfserve.toml").write_text(f'database_url = "{url}"\n')
    creds = cli_json(data, "app", "create", "a")
    cli_json(data, "service", "publish", "svc", "--rpm", "100000", "--tpm", "100000000")
    shared = ["--limiter", "redis", "--redis-url", redis_url, "--threads", "1"]
    one = start_server(data, *shared, new_session=True)
    two = start_server(data, *shared, new_session=True)
    for gateway in (one, two):
        gateway.creds = creds
    yield one, two
    for gateway in (one, two):
        stop_server(gateway)
    if drop is not None:
        drop()


def ask(gateway, api_path: str, token: str, body: dict | None = None) -> dict:
    return requests.post(gateway.chat_url(api_path), params={"access_token": token}, json=body or QUESTION,
                         timeout=120).json()


def test_one_rpm_budget_across_gateways_under_concurrent_load(pair):
    one, two = pair
    budget = "b_" + one.data_dir.name  # one per database: both runs share the Redis (and its minute)
    cli_json(one.data_dir, "service", "publish", budget, "--rpm", "12", "--tpm", "100000000")
    tokens = [one.token(), two.token()]  # a token from each; both valid on both
    start = threading.Barrier(30)

    def call(i: int) -> dict:
        gateway = pair[i % 2]
        start.wait()
        return ask(gateway, budget, tokens[(i // 2) % 2])

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(call, range(30)))
    served = [a for a in answers if "result" in a]
    refused = [a for a in answers if a.get("error_code") == 336501]
    assert len(served) == 12 and len(refused) == 18, " ".join(str(a.get("error_code")) for a in answers)


def test_publish_revoke_and_engine_change_are_seen_by_both_within_a_second(pair):
    one, two = pair
    token = one.token()
    with ScriptedReplica("From A.") as a, ScriptedReplica("From B.") as b:
        cli_json(one.data_dir, "engine", "add", "gpu", "--url", a.url)
        cli_json(one.data_dir, "service", "publish", "remote", "--engine", "gpu", "--model", "fine")
        time.sleep(1.0)
        assert ask(one, "remote", token)["result"] == "From A."
        assert ask(two, "remote", token)["result"] == "From A."
        cli_json(one.data_dir, "engine", "add", "gpu", "--url", b.url, "--replace")
        time.sleep(1.0)
        assert ask(one, "remote", token)["result"] == "From B."
        assert ask(two, "remote", token)["result"] == "From B."

    cli_json(one.data_dir, "service", "publish", "later", "--rpm", "100000", "--tpm", "100000000")
    time.sleep(1.0)
    later = ask(two, "later", token)
    assert "error_code" not in later and later["usage"]["completion_tokens"] > 0, later
    for api_path in ("svc", "later"):  # restrict the app to two services, then take one away
        cli(one.data_dir, "app", "grant", "a", api_path)
    cli(one.data_dir, "app", "revoke", "a", "later")
    time.sleep(1.0)
    for gateway in (one, two):
        assert ask(gateway, "later", token)["error_code"] == 6
    cli(one.data_dir, "app", "allow-all", "a")


def _rows(data_dir) -> dict[str, int]:
    from qfserve.config import database_url_for
    from qfserve.store.copy import row_counts
    from qfserve.store.db import Store

    store = Store(data_dir, database_url_for(data_dir))
    try:
        if store.dialect == "sqlite":
            assert store.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return row_counts(store)
    finally:
        store.close()


def test_kill_9_of_one_gateway_mid_stream_loses_nothing_committed(pair):
    one, two = pair
    token = one.token()  # issued by the gateway about to die
    # Enough tokens for some text: a turn whose answer is empty (two tokens may be half a Chinese
    # character, which is dropped) is not remembered.
    remembered = ask(one, "svc", token, {"messages": [{"role": "user", "content": "我叫李雷，住在杭州"}],
                                         "max_output_tokens": 16, "min_output_tokens": 8,
                                         "enable_user_memory": True, "user_id": USER,
                                         "user_memory_extract_level": 1})
    assert "result" in remembered, remembered
    list_url = "/qfserve/v1/memory/list"
    deadline = time.monotonic() + 30
    while len(requests.post(one.base_url + list_url, params={"access_token": token}, json={"user_id": USER},
                            timeout=30).json()["result"]) < 2:
        assert time.monotonic() < deadline, "the memory was never written"
        time.sleep(0.2)
    before = _rows(one.data_dir)

    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True,
            "max_output_tokens": 500, "min_output_tokens": 500}
    with requests.post(one.chat_url("svc"), params={"access_token": token}, json=body, stream=True,
                       timeout=120) as response:
        first = next(line for line in response.iter_lines() if line)
        assert orjson.loads(first[6:])["result"]
        os.killpg(one.process.pid, signal.SIGKILL)  # the gateway and its engine worker, mid-stream
        one.process.wait()

    after = _rows(two.data_dir)
    # Nothing committed is lost; rows may be added (usage counts are flushed in the background).
    assert all(after[t] >= n for t, n in before.items()), (before, after)
    for table in ("apps", "tokens", "services", "grants", "memories"):
        assert after[table] == before[table], (table, before, after)
    # The survivor: the dead one's token is valid, its memory is recalled, and it keeps serving.
    # (Served, not necessarily text: two tokens may be half a character, which is dropped.)
    answer = ask(two, "svc", token)
    assert "error_code" not in answer and answer["usage"]["completion_tokens"] > 0, answer
    memories = requests.post(two.base_url + list_url, params={"access_token": token}, json={"user_id": USER},
                             timeout=30).json()["result"]
    assert sorted(m["text"] for m in memories) == ["用户住在杭州", "用户名叫李雷"]
    assert requests.get(f"{two.base_url}/readyz", timeout=10).status_code == 200
