"""Fine-tuning from the console: uploaded data sets, and training / evaluation jobs in the background.

A job is the CLI itself, `qfserve sft train … --json`, run as a child process: the console adds no
second training code, the server's event loop never runs torch, and a crash in training cannot take
the server down. The job's row in the database says what it is; the trainer's own files say how far
it got (`train_log.jsonl`, one line per step, then `manifest.json` when complete), so a page reload,
or a server restart, finds the job as it is. Jobs still running when the server stops are stopped
with it and marked cancelled: no training outlives its server unseen.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from qfserve.sft import manifest
from qfserve.sft.config import TrainConfig
from qfserve.sft.data import DataError, load_conversations
from qfserve.store import console as console_store
from qfserve.store.db import Store

log = logging.getLogger(__name__)

NAME_RULE = re.compile(r"^[a-z0-9_-]{2,20}$")  # the api_path rule: a job can be published under its name
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULTS = TrainConfig()

# field: (type, low, high) — the CLI's own bounds, checked here so a bad form never spawns a process.
TRAIN_FIELDS: dict[str, tuple[type, float, float]] = {
    "epochs": (int, 1, 100),
    "learning_rate": (float, 1e-7, 1.0),
    "lora_rank": (int, 1, 256),
    "lora_alpha": (float, 0.0, 4096.0),
    "max_length": (int, 8, 8192),
    "batch_size": (int, 1, 256),
    "eval_split": (float, 0.0, 0.9),
    "seed": (int, 0, 2**31 - 1),
}


def train_inputs() -> list[dict]:
    """The form's number inputs: name, bounds, step and default of each training option."""
    return [{"name": name, "low": low, "high": high, "step": 1 if kind is int else "any",
             "default": getattr(DEFAULTS, name)} for name, (kind, low, high) in TRAIN_FIELDS.items()]


def check_train_config(given: dict) -> dict:
    """Form fields → the options for `sft train`; defaults for those left empty. Raises ValueError."""
    config = {}
    for name, (kind, low, high) in TRAIN_FIELDS.items():
        raw = given.get(name)
        if raw is None or str(raw).strip() == "":
            config[name] = getattr(DEFAULTS, name)
            continue
        try:
            value = kind(str(raw).strip())
        except ValueError:
            raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}") from None
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low:g} and {high:g}")
        config[name] = value
    return config


def check_job_name(name: str) -> str:
    if not NAME_RULE.match(name or ""):
        raise ValueError("job name: use 2 to 20 characters of lowercase letters, digits, '_' or '-' "
                         "(it becomes the service's api_path when published)")
    return name


def _console_dir(store: Store, *parts: str) -> Path:
    folder = store.data_dir.joinpath("console", *parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_dataset(store: Store, filename: str, content: bytes) -> console_store.Dataset:
    """Validate an uploaded JSONL with the trainer's own validator and keep it; raises DataError."""
    if len(content) > MAX_UPLOAD_BYTES:
        raise DataError(filename, [(0, f"the file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")])
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "data.jsonl").name)[:80] or "data.jsonl"
    path = _console_dir(store, "datasets") / f"{time.time_ns()}-{safe}"
    path.write_bytes(content)
    try:
        conversations = load_conversations(path)
    except DataError as exc:
        path.unlink(missing_ok=True)
        raise DataError(safe, exc.problems) from None
    return console_store.add_dataset(store, safe, str(path), len(conversations))


def _job_log(store: Store, job_id: int, kind: str) -> Path:
    return _console_dir(store, "jobs") / f"{job_id}-{kind}.log"


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def progress(job: console_store.Job) -> dict:
    """The trainer's log so far: steps and losses, the total step count, and the manifest's result."""
    steps, losses, total = [], [], None
    try:
        with open(Path(job.out_dir) / manifest.TRAIN_LOG_NAME, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line being written
                steps.append(record["step"])
                losses.append(record["loss"])
                total = record.get("total_steps", total)
    except OSError:
        pass
    result = None
    if job.status == "succeeded":
        try:
            result = manifest.load_manifest(job.out_dir)["result"]
        except (OSError, ValueError):
            result = None
    return {"steps": steps, "losses": losses, "total_steps": total, "result": result}


class JobRunner:
    """Starts, watches and stops the server's training and evaluation processes."""

    def __init__(self, store: Store, python: str = sys.executable):
        self.store = store
        self.python = python
        self._processes: dict[tuple[int, str], subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- training ------------------------------------------------------------------------------

    def start_training(self, name: str, dataset_id: int, given: dict) -> console_store.Job:
        check_job_name(name)
        config = check_train_config(given)
        dataset = console_store.get_dataset(self.store, dataset_id)
        if dataset is None:
            raise ValueError("choose an uploaded data set")
        out_dir = self.store.data_dir / "adapters" / name
        if out_dir.exists():
            raise ValueError(f"{out_dir} already exists: choose another job name")
        job = console_store.add_job(self.store, name, dataset.id, str(out_dir), config)
        args = ["sft", "train", "--data", dataset.path, "--out", str(out_dir), "--json", "--threads", "1"]
        for key, value in config.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self._spawn(job.id, "train", args)
        console_store.update_job(self.store, job.id, status="running")
        return console_store.get_job(self.store, job.id)

    def start_eval(self, job_id: int, dataset_id: int | None = None) -> console_store.Job:
        job = self.job(job_id)
        if job is None or job.status != "succeeded":
            raise ValueError("only a finished training job can be evaluated")
        if job.eval_status == "running":
            raise ValueError("this job is already being evaluated")
        dataset = console_store.get_dataset(self.store, dataset_id or job.dataset_id)
        if dataset is None:
            raise ValueError("choose an uploaded data set")
        console_store.update_job(self.store, job.id, eval_status="running", eval_result=None)
        self._spawn(job.id, "eval", ["sft", "eval", job.out_dir, "--data", dataset.path, "--json"])
        return console_store.get_job(self.store, job.id)

    def cancel(self, job_id: int) -> None:
        process = self._processes.get((job_id, "train"))
        if process is None or process.poll() is not None:
            raise ValueError("the job is not running")
        console_store.update_job(self.store, job_id, status="cancelled", error="cancelled from the console",
                                 finished_at=int(time.time()))
        process.terminate()

    def _spawn(self, job_id: int, kind: str, args: list[str]) -> None:
        log_path = _job_log(self.store, job_id, kind)
        with open(log_path, "wb") as errors, open(log_path.with_suffix(".json"), "wb") as out:
            # Its own process group, so a Ctrl-C at the server's terminal is the server's to handle.
            process = subprocess.Popen([self.python, "-m", "qfserve", *args], stdout=out, stderr=errors,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, "COLUMNS": "120"})
            with self._lock:
                self._processes[(job_id, kind)] = process
        if kind == "train":
            console_store.update_job(self.store, job_id, pid=process.pid)
        threading.Thread(target=self._watch, args=(job_id, kind, process, log_path), daemon=True,
                         name=f"console-job-{job_id}-{kind}").start()

    def _watch(self, job_id: int, kind: str, process: subprocess.Popen, log_path: Path) -> None:
        code = process.wait()
        try:
            self._finish(job_id, kind, code, log_path)
        except Exception:  # a watcher thread must never die silently with the job left "running"
            log.exception("console job %s (%s): recording its end failed", job_id, kind)
        finally:
            with self._lock:
                self._processes.pop((job_id, kind), None)
            self.store.close()  # this thread's connection

    def _finish(self, job_id: int, kind: str, code: int, log_path: Path) -> None:
        job = console_store.get_job(self.store, job_id)
        if job is None:
            return
        if kind == "eval":
            try:
                result = json.loads(log_path.with_suffix(".json").read_text())
                console_store.update_job(self.store, job_id, eval_status="succeeded", eval_result=result)
            except (OSError, ValueError):
                console_store.update_job(self.store, job_id, eval_status="failed",
                                         eval_result={"error": _tail(log_path) or f"exit code {code}"})
            return
        if job.status == "cancelled":
            return
        if code == 0 and (Path(job.out_dir) / manifest.MANIFEST_NAME).is_file():
            console_store.update_job(self.store, job_id, status="succeeded", error=None, finished_at=int(time.time()))
        else:
            console_store.update_job(self.store, job_id, status="failed", finished_at=int(time.time()),
                                     error=_tail(log_path) or f"exit code {code}")
        log.info("console job %s (%s) ended with exit code %s", job.name, kind, code)

    # -- reading -------------------------------------------------------------------------------

    def job(self, job_id: int) -> console_store.Job | None:
        job = console_store.get_job(self.store, job_id)
        return self._reconcile(job) if job else None

    def jobs(self) -> list[console_store.Job]:
        return [self._reconcile(job) for job in console_store.list_jobs(self.store)]

    def _reconcile(self, job: console_store.Job) -> console_store.Job:
        """A job marked running that no process of this server runs (the server stopped or crashed
        meanwhile) is settled from what the trainer left on disk."""
        changes = {}
        stale_queue = job.status == "queued" and time.time() - job.created_at > 60  # died between row and spawn
        if (job.status == "running" or stale_queue) and (job.id, "train") not in self._processes:
            if (Path(job.out_dir) / manifest.MANIFEST_NAME).is_file():
                changes.update(status="succeeded", finished_at=int(time.time()))
            else:
                changes.update(status="failed", finished_at=int(time.time()),
                               error="the training process ended with the server that ran it")
        if job.eval_status == "running" and (job.id, "eval") not in self._processes:
            changes.update(eval_status="failed", eval_result={"error": "the evaluation ended with the server that ran it"})
        if not changes:
            return job
        console_store.update_job(self.store, job.id, **changes)
        return console_store.get_job(self.store, job.id)

    def close(self) -> None:
        """Stop every child process (the server is shutting down)."""
        with self._lock:
            running = list(self._processes.items())
        for (job_id, kind), process in running:
            if process.poll() is None:
                if kind == "train":
                    console_store.update_job(self.store, job_id, status="cancelled", error="the server stopped",
                                             finished_at=int(time.time()))
                process.terminate()
        for _, process in running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

