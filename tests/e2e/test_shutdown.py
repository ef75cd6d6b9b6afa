"""Graceful shutdown: SIGTERM to the whole process group stops admitting, lets a running stream
finish cleanly, then exits."""

from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import requests
from conftest import cli_json, start_server


def test_sigterm_finishes_the_running_stream_then_exits(tmp_path):
    creds = cli_json(tmp_path, "app", "create", "a")
    cli_json(tmp_path, "service", "publish", "svc", "--model", "default")
    # Its own process group, so the signal reaches the engine worker too, as Ctrl+C or systemd would.
    server = start_server(tmp_path, "--threads", "1", new_session=True)
    server.creds = creds
    token = server.token()
    body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}], "stream": True,
            "max_output_tokens": 96, "min_output_tokens": 96}
    lines: list[bytes] = []

    def read_stream():
        with requests.post(server.chat_url("svc"), params={"access_token": token}, json=body, stream=True,
                           timeout=300) as response:
            lines.extend(line for line in response.iter_lines() if line)

    reader = threading.Thread(target=read_stream)
    reader.start()
    deadline = time.monotonic() + 120
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines, "the stream never started"
    os.killpg(server.process.pid, signal.SIGTERM)
    reader.join(timeout=240)
    chunks = [orjson.loads(line[len(b"data: "):]) for line in lines]
    assert chunks[-1]["is_end"] is True and "error_code" not in chunks[-1]
    assert chunks[-1]["usage"]["completion_tokens"] == 96
    # uvicorn re-raises the signal once it has shut down cleanly, so "killed by SIGTERM" is the clean exit.
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log() and "Traceback" not in server.log()
    try:
        requests.get(f"{server.base_url}/healthz", timeout=2)
        raise AssertionError("the server still answers after shutdown")
    except requests.ConnectionError:
        pass
