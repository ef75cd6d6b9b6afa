"""Shared fixtures: a real qfserve server process over loopback, with a real SQLite data dir.

The server is started the way a user starts it (the `qfserve` CLI in a subprocess), apps and
services are made with the CLI too, and tests talk to it over HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
QFSERVE = [sys.executable, "-m", "qfserve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "QFSERVE_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    # No terminal on stdin, as in a script: destructive commands don't stop to ask.
    result = subprocess.run([*QFSERVE, *args], env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"qfserve {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def cli_json(data_dir: Path, *args: str):
    return json.loads(cli(data_dir, *args, "--json").stdout)


@dataclass
class Server:
    data_dir: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    creds: dict = field(default_factory=dict)
    api_path: str = "svc"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat_url(self, api_path: str | None = None) -> str:
        return f"{self.base_url}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{api_path or self.api_path}"

    def token(self, creds: dict | None = None) -> str:
        creds = creds or self.creds
        response = requests.post(
            f"{self.base_url}/oauth/2.0/token",
            params={"grant_type": "client_credentials", "client_id": creds["api_key"],
                    "client_secret": creds["secret_key"]},
            json={}, timeout=30,
        )
        return response.json()["access_token"]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return cli(self.data_dir, *args, check=check)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, *extra: str, env: dict | None = None, wait: float = 180.0,
                 new_session: bool = False) -> Server:
    port = free_port()
    log_path = data_dir / f"server-{port}.log"
    log_file = open(log_path, "w")
    process = subprocess.Popen(
        [*QFSERVE, "serve", "--data-dir", str(data_dir), "--port", str(port), "--parallel", "4",
         "--ctx-per-seq", "2048", *extra],
        stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT,
        start_new_session=new_session,
    )
    server = Server(data_dir, port, process, log_path)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if requests.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server not ready after {wait}s:\n{server.log()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """One server for the session, with app `tester` and service `svc` on the embedded default model."""
    data_dir = tmp_path_factory.mktemp("qfserve-data")
    creds = cli_json(data_dir, "app", "create", "tester")
    cli_json(data_dir, "service", "publish", "svc", "--model", "default", "--profile", "ERNIE-Speed-8K",
             "--rpm", "100000", "--tpm", "100000000")
    srv = start_server(data_dir)
    srv.creds = creds
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def token(server) -> str:
    return server.token()
