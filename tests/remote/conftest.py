"""Fixtures for the remote-engine tests: real OpenAI-compatible replicas and a gateway in front.

By default the replicas are llama-cpp-python's own server on the embedded GGUF (`stand_in.py`),
started here. With QFSERVE_TEST_VLLM_URL set (`make test-vllm`), the same suite runs against a
real vLLM server started by `bench/vllm/run.sh`, serving the same model converted to a Hugging Face
folder, with the persona adapter.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import ROOT, Server, cli, cli_json, free_port, start_server, stop_server

PERSONA = ROOT / "examples" / "sft" / "persona.jsonl"
VLLM_URL = os.environ.get("QFSERVE_TEST_VLLM_URL")
VLLM_MODEL = os.environ.get("QFSERVE_TEST_VLLM_MODEL", "smollm2")
BASE_NAME = "smollm2"
PERSONA_NAME = "persona"


def base_gguf() -> str:
    from qfserve.engine.prompt import default_model_path

    return default_model_path()


def _persona_key() -> str:
    digest = hashlib.sha256(PERSONA.read_bytes())
    for source in sorted((ROOT / "qfserve" / "sft").glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def train_persona(out: Path) -> Path:
    """The SFT issue's persona adapter (same settings as tests/sft), trained once and kept in
    pytest's cache, keyed by the data and the trainer's code (training is deterministic)."""
    pytest.importorskip("torch", reason="the persona adapter needs the train extra")
    pytest.importorskip("peft", reason="the persona adapter needs the train extra")
    from qfserve.sft.config import TrainConfig
    from qfserve.sft.train import train

    if (out / "manifest.json").is_file():
        return out
    config = TrainConfig(epochs=3, learning_rate=2e-3, lora_rank=8, lora_alpha=16, max_length=96,
                         batch_size=4, seed=7, eval_split=0.15, threads=1)
    train(str(PERSONA), base_gguf(), str(out), config)
    return out


@pytest.fixture(scope="session")
def persona_adapter(request, tmp_path_factory) -> Path:
    explicit = os.environ.get("QFSERVE_TEST_PERSONA_DIR")
    if explicit:
        return Path(explicit)
    cache = getattr(request.config, "cache", None)  # pytest's cache dir, kept between runs, when enabled
    folder = cache.mkdir(f"qfserve-persona-{_persona_key()}") if cache is not None else tmp_path_factory.mktemp("persona")
    return train_persona(Path(folder))


@dataclass
class Replica:
    url: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def metric(self, name: str = "vllm:num_requests_running") -> float:
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def received(self) -> list[dict]:
        return requests.get(f"{self.url}/debug/requests", timeout=10).json()

    def generated(self) -> list[int]:
        return requests.get(f"{self.url}/debug/generated", timeout=10).json()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def start_stand_in(tmp: Path, *, lora: Path | None = None, n_ctx: int = 1024, port: int | None = None) -> Replica:
    port = port or free_port()
    log_path = tmp / f"stand-in-{port}.log"
    args = [sys.executable, "-m", "tests.remote.stand_in", "--port", str(port), "--model", base_gguf(),
            "--name", BASE_NAME, "--n-ctx", str(n_ctx)]
    if lora is not None:
        args += ["--alias", f"{PERSONA_NAME}={lora}"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    replica = Replica(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"stand-in exited:\n{log_path.read_text()}")
        try:
            if requests.get(f"{replica.url}/v1/models", timeout=2).status_code == 200:
                return replica
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    replica.kill()
    raise RuntimeError(f"stand-in not ready:\n{log_path.read_text()}")


@dataclass
class RemoteSetup:
    gateway: Server
    replicas: list[Replica]
    vllm: bool
    model: str
    tmp: Path
    extra: dict = field(default_factory=dict)

    def post(self, api_path: str, body: dict, **kwargs) -> requests.Response:
        return requests.post(self.gateway.chat_url(api_path), params={"access_token": self.token}, json=body,
                             timeout=kwargs.pop("timeout", 300), **kwargs)

    @property
    def token(self) -> str:
        if "token" not in self.extra:
            self.extra["token"] = self.gateway.token()
        return self.extra["token"]


def pool_args(urls: list[str], *, vllm: bool) -> list[str]:
    args = [arg for url in urls for arg in ("--url", url)]
    args += ["--cooldown", "1", "--probe-interval", "0.5", "--timeout", "60"]
    if not vllm:
        args += ["--chat-template", base_gguf(), "--context-length", "1024"]
    return args + ["--base", "default"]


@pytest.fixture(scope="module")
def remote(tmp_path_factory, persona_adapter) -> RemoteSetup:
    """A gateway with engine `pool` (two replicas, or the one vLLM server), services `rsvc` (the
    base model, safety off), `rpersona` (the persona adapter) and `rguard` (safety on)."""
    tmp = tmp_path_factory.mktemp("remote")
    replicas: list[Replica] = []
    if VLLM_URL:
        replicas = [Replica(VLLM_URL)]
        model = VLLM_MODEL
    else:
        lora = persona_adapter / "adapter.gguf"
        replicas = [start_stand_in(tmp, lora=lora), start_stand_in(tmp, lora=lora)]
        model = BASE_NAME
    data = tmp / "data"
    creds = cli_json(data, "app", "create", "tester")
    cli_json(data, "engine", "add", "pool", *pool_args([r.url for r in replicas], vllm=bool(VLLM_URL)))
    unlimited = ["--rpm", "100000", "--tpm", "100000000"]
    cli_json(data, "service", "publish", "rsvc", "--engine", "pool", "--model", model, "--safety", "off", *unlimited)
    cli_json(data, "service", "publish", "rpersona", "--engine", "pool", "--model", PERSONA_NAME,
             "--adapter", str(persona_adapter), "--safety", "off", *unlimited)
    cli_json(data, "service", "publish", "rguard", "--engine", "pool", "--model", model, *unlimited)
    lexicon = tmp / "deny.tsv"
    lexicon.write_text("the\tdemo\t2\n")
    gateway = start_server(data, "--safety-lexicon", str(lexicon))
    gateway.creds = creds
    setup = RemoteSetup(gateway, replicas, bool(VLLM_URL), model, tmp)
    yield setup
    stop_server(gateway)
    for replica in replicas:
        replica.kill()


__all__ = ["RemoteSetup", "Replica", "cli", "cli_json", "start_server", "stop_server", "start_stand_in", "pool_args"]
