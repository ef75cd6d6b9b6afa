"""Run the official qianfan SDK in AK/SK (IAM) mode against a test server, in a subprocess.

The SDK reads QIANFAN_* settings once, at import and first use, so each run gets a fresh
interpreter with its own environment. The snippet prints JSON lines; they come back parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Prepended to every snippet: compact JSON output for the test to read.
PRELUDE = "import json, qianfan\nfrom qianfan.errors import APIError\ndef emit(obj): print(json.dumps(obj), flush=True)\n"


def sdk_env(base_url: str, creds: dict, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    env.update(
        QIANFAN_ACCESS_KEY=creds["access_key"],
        QIANFAN_SECRET_KEY=creds["secret_access_key"],
        QIANFAN_BASE_URL=base_url,
        QIANFAN_CONSOLE_API_BASE_URL=base_url,
        **extra,
    )
    return env


def start_sdk(base_url: str, creds: dict, code: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + code],
        env=sdk_env(base_url, creds, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_sdk(base_url: str, creds: dict, code: str, timeout: float = 300, **extra: str) -> list:
    process = start_sdk(base_url, creds, code, **extra)
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"SDK run failed ({process.returncode}):\n{stdout}\n{stderr}"
    return [json.loads(line) for line in stdout.splitlines() if line.startswith(("{", "["))]
