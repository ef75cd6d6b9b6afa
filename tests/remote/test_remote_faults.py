"""Replica faults a real server cannot be made to produce on cue: garbage, a stream cut mid-way, a
hang, and vLLM's adapter refusals. A small scripted server stands in for a broken vLLM replica; the
gateway in front is the real one. (The real-server behaviours — a killed replica, cancellation,
context errors — are in test_remote_engine.py.)
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from conftest import cli, cli_json, start_server, stop_server

from qfserve.sft.manifest import MANIFEST_FORMAT

from .scripted import ScriptedReplica

def default_sha() -> str:
    from qfserve.engine.prompt import default_model_path
    from qfserve.sft.manifest import base_hash

    return base_hash(default_model_path())


def fake_adapter(folder, base_sha256: str | None = None):
    base_sha256 = base_sha256 or default_sha()
    (folder / "peft").mkdir(parents=True)
    (folder / "peft" / "adapter_config.json").write_text(json.dumps({"r": 64, "peft_type": "LORA"}))
    (folder / "manifest.json").write_text(json.dumps({
        "format": MANIFEST_FORMAT, "base": {"sha256": base_sha256}, "files": {"peft": "peft", "gguf": None}}))
    return folder


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    with ScriptedReplica() as broken, ScriptedReplica() as healthy:
        creds = cli_json(tmp, "app", "create", "a")
        cli_json(tmp, "engine", "add", "mock", "--url", broken.url, "--timeout", "1", "--cooldown", "0.5",
                 "--probe-interval", "0.2", "--base", "default")
        cli_json(tmp, "engine", "add", "mock2", "--url", healthy.url)
        for name in ("garbage", "cut", "hang", "toolong"):
            cli_json(tmp, "service", "publish", name, "--engine", "mock", "--model", name)
        cli_json(tmp, "service", "publish", "fine", "--engine", "mock2", "--model", "fine")
        gateway = start_server(tmp)
        gateway.creds = creds
        gateway.extra = {"broken": broken, "token": gateway.token()}
        yield gateway
        stop_server(gateway)


def post(gateway, api_path, body):
    return requests.post(gateway.chat_url(api_path), params={"access_token": gateway.extra["token"]},
                         json=body, timeout=60)


def errors_of(gateway, kind: str) -> float:
    text = requests.get(f"{gateway.base_url}/metrics", timeout=10).text
    url = gateway.extra["broken"].url
    for line in text.splitlines():
        if line.startswith(f'qfserve_remote_errors_total{{engine="mock",kind="{kind}",replica="{url}"}}') or \
                line.startswith(f'qfserve_remote_errors_total{{engine="mock",replica="{url}",kind="{kind}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_admitted(gateway) -> None:
    url = gateway.extra["broken"].url
    deadline = time.monotonic() + 20
    while f'qfserve_remote_replica_healthy{{engine="mock",replica="{url}"}} 1.0' not in \
            requests.get(f"{gateway.base_url}/metrics", timeout=10).text:
        assert time.monotonic() < deadline, "the replica was never admitted again"
        time.sleep(0.1)


QUESTION = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize("api_path,kind", [("garbage", "garbage"), ("hang", "timeout")])
def test_garbage_and_hang_end_the_request_with_its_id(faulty, api_path, kind):
    wait_admitted(faulty)
    before = errors_of(faulty, kind)
    for stream in (False, True):
        wait_admitted(faulty)
        response = post(faulty, api_path, {**QUESTION, "stream": stream})
        assert response.status_code == 200
        body = response.json()  # before any chunk: a plain JSON error body
        assert body["error_code"] == 2 and body["error_msg"] == "Service temporarily unavailable", body
        assert body["id"].startswith("as-")
    assert errors_of(faulty, kind) >= before + 2  # counted against the replica
    assert post(faulty, "fine", QUESTION).json()["result"] == "Hello."  # the gateway keeps serving


def test_stream_cut_mid_way(faulty):
    wait_admitted(faulty)
    response = post(faulty, "cut", {**QUESTION, "stream": True})
    events = [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]
    assert events[0]["result"] and "error_code" not in events[0]
    assert events[-1]["error_code"] == 2 and events[-1]["id"] == events[0]["id"], events
    assert errors_of(faulty, "cut") >= 1
    assert post(faulty, "fine", QUESTION).json()["result"] == "Hello."


def test_upstream_context_error_is_336103(faulty):
    wait_admitted(faulty)
    for stream in (False, True):
        answer = post(faulty, "toolong", {**QUESTION, "stream": stream}).json()
        assert answer["error_code"] == 336103 and answer["error_msg"] == "Prompt tokens too long", answer
        assert answer["id"].startswith("as-")
    assert errors_of(faulty, "status") == 0  # the replica did its job: not counted against it


def test_ejected_replica_answers_2_at_once_and_comes_back(faulty):
    wait_admitted(faulty)
    post(faulty, "garbage", QUESTION)  # ejects the only replica of `mock`
    answer = post(faulty, "cut", QUESTION).json()
    assert answer["error_code"] == 2
    wait_admitted(faulty)  # the probe lets it back after the cool-down


def test_adapter_loaded_at_run_time_and_refusals_are_clear(faulty, tmp_path):
    data = faulty.data_dir
    adapter = fake_adapter(tmp_path / "big")
    loaded = cli(data, "service", "publish", "lora", "--engine", "mock", "--model", "loadable",
                 "--adapter", str(adapter))
    assert "adapter loadable loaded" in loaded.stdout
    refused = cli(data, "service", "publish", "big", "--engine", "mock", "--model", "bigrank",
                  "--adapter", str(adapter), check=False)
    assert refused.returncode == 1 and "LoRA rank 64 is greater than max_lora_rank 8" in refused.stderr
    refused = cli(data, "service", "publish", "unl", "--engine", "mock", "--model", "unlisted",
                  "--adapter", str(adapter), check=False)
    assert refused.returncode == 1 and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in refused.stderr
    assert "Traceback" not in refused.stderr
    # Adapters trained on another base are refused; so are adapters on an engine that declares none.
    other = fake_adapter(tmp_path / "other", base_sha256="0" * 64)
    refused = cli(data, "service", "publish", "wb", "--engine", "mock", "--model", "fine",
                  "--adapter", str(other), check=False)
    assert refused.returncode == 1 and "trained on a different base model" in refused.stderr
    refused = cli(data, "service", "publish", "wb", "--engine", "mock2", "--model", "fine",
                  "--adapter", str(adapter), check=False)
    assert refused.returncode == 1 and "does not declare the base model" in refused.stderr


def test_publish_refuses_a_model_the_replicas_do_not_serve(faulty):
    refused = cli(faulty.data_dir, "service", "publish", "nope", "--engine", "mock2", "--model", "nosuch",
                  check=False)
    assert refused.returncode == 1 and "does not serve 'nosuch'" in refused.stderr
    refused = cli(faulty.data_dir, "service", "publish", "nope", "--engine", "ghost", "--model", "x", check=False)
    assert refused.returncode == 1 and "no engine named 'ghost'" in refused.stderr
