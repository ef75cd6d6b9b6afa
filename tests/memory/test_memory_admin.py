"""Management: the `qfserve memory` CLI (operator) and the admin HTTP routes (one app's own users)."""

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qfserve.api import memory_routes
from qfserve.api.errors import install_error_handlers
from qfserve.cli.memory import app as memory_cli
from qfserve.store import memories as memory_store
from qfserve.store.tokens import issue_token

from .conftest import SERVICE, say


@pytest.fixture
async def remembered(manager, apps):
    """u1 known to both apps, in two services of app-a; u2 known to app-a only."""
    app_a, app_b = apps
    await say(manager, app_a, "我叫李雷，住在杭州", request_id="as-aaaaaaaaaa")
    await say(manager, app_a, "我搬到上海了", request_id="as-bbbbbbbbbb")
    await say(manager, app_a, "I love jazz", service="/chat/other")
    await say(manager, app_a, "我叫韩梅梅", user="u2")
    await say(manager, app_b, "我是一名律师")
    return apps


def run_cli(store, *args):
    result = CliRunner().invoke(memory_cli, [*args, "--data-dir", str(store.data_dir)], env={"COLUMNS": "200"})
    return result


def test_cli_list_shows_every_app_and_superseded_memories(store, remembered):
    result = run_cli(store, "list", "u1", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    # Ordered by app, service (api_path), then age.
    assert [(r["app"], r["api_path"], r["text"]) for r in rows] == [
        ("app-a", SERVICE, "用户名叫李雷"),
        ("app-a", SERVICE, "用户住在杭州"),
        ("app-a", SERVICE, "用户住在上海"),
        ("app-a", "/chat/other", "The user likes jazz"),
        ("app-b", SERVICE, "用户是一名律师"),
    ]
    hangzhou, shanghai = rows[1], rows[2]
    assert hangzhou["superseded_by"] == shanghai["id"] and shanghai["superseded_by"] is None
    assert (shanghai["request_id"], shanghai["round"]) == ("as-bbbbbbbbbb", 1)

    narrowed = json.loads(run_cli(store, "list", "u1", "--service", SERVICE, "--app", "app-a", "--json").stdout)
    assert [r["text"] for r in narrowed] == ["用户名叫李雷", "用户住在杭州", "用户住在上海"]

    table = run_cli(store, "list", "u1")
    assert table.exit_code == 0 and "用户住在上海" in table.stdout and f"superseded by {shanghai['id']}" in table.stdout


def test_cli_delete_one_then_all(store, remembered):
    [first, *_] = memory_store.list_memories(store, "u1")
    assert run_cli(store, "delete", "u1", "--id", str(first.id)).exit_code == 0
    assert run_cli(store, "delete", "u1", "--id", str(first.id)).exit_code == 1  # already gone
    assert run_cli(store, "delete", "u2", "--id", str(memory_store.list_memories(store, "u1")[0].id)).exit_code == 1
    result = run_cli(store, "delete", "u1", "--app", "app-a", "--json")
    assert json.loads(result.stdout)["deleted"] == 3
    assert [m.text for m in memory_store.list_memories(store, "u1")] == ["用户是一名律师"]
    assert len(memory_store.list_memories(store, "u2")) == 1
    assert run_cli(store, "list", "u1", "--app", "nope").exit_code == 1


@pytest.fixture
def http(store):
    api = FastAPI()
    install_error_handlers(api)
    api.include_router(memory_routes.router)
    api.state.store = store
    return TestClient(api)


def post(http, store, app, path, body):
    token, *_ = issue_token(store, app)
    return http.post(f"/qfserve/v1/memory/{path}", params={"access_token": token}, json=body).json()


def test_routes_see_only_the_calling_apps_users(http, store, remembered):
    app_a, app_b = remembered
    listed = post(http, store, app_a, "list", {"user_id": "u1"})
    assert listed["id"].startswith("as-")
    assert [m["text"] for m in listed["result"]] == ["用户名叫李雷", "用户住在杭州", "用户住在上海", "The user likes jazz"]
    assert "app_id" not in listed["result"][0]
    assert [m["text"] for m in post(http, store, app_b, "list", {"user_id": "u1"})["result"]] == ["用户是一名律师"]
    only = post(http, store, app_a, "list", {"user_id": "u1", "api_path": "/chat/other"})["result"]
    assert [m["text"] for m in only] == ["The user likes jazz"]

    other_apps_id = post(http, store, app_b, "list", {"user_id": "u1"})["result"][0]["id"]
    assert post(http, store, app_a, "delete", {"user_id": "u1", "id": other_apps_id})["result"] == {"deleted": 0}
    jazz_id = listed["result"][3]["id"]
    assert post(http, store, app_a, "delete", {"user_id": "u1", "id": jazz_id})["result"] == {"deleted": 1}
    assert post(http, store, app_a, "delete", {"user_id": "u1"})["result"] == {"deleted": 3}
    assert post(http, store, app_a, "list", {"user_id": "u1"})["result"] == []
    assert len(post(http, store, app_b, "list", {"user_id": "u1"})["result"]) == 1


def test_routes_need_credentials_and_a_user_id(http, store, apps):
    app_a, _ = apps
    assert http.post("/qfserve/v1/memory/list", json={"user_id": "u1"}).json()["error_code"] == 100
    bad = http.post("/qfserve/v1/memory/list", params={"access_token": "nope"}, json={"user_id": "u1"}).json()
    assert bad["error_code"] == 110
    assert post(http, store, app_a, "list", {})["error_code"] == 336001
    assert post(http, store, app_a, "delete", {"user_id": "u1", "id": "7"})["error_code"] == 336001
    token, *_ = issue_token(store, app_a)
    raw = http.post("/qfserve/v1/memory/list", params={"access_token": token}, content=b"{not json")
    assert raw.json()["error_code"] == 336002
