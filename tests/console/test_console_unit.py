"""Console pieces alone: the sign-in throttle (in-process app, no model), the vendored files, jobs' checks."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qfserve.api.app import create_app
from qfserve.config import load_settings
from qfserve.console import jobs, signin
from qfserve.store.db import Store

VENDOR = Path(__file__).parents[2] / "qfserve" / "console" / "static" / "vendor"


def test_failed_signins_are_throttled(tmp_path):
    app = create_app(load_settings(data_dir=tmp_path))
    with TestClient(app) as client:
        statuses = [client.get("/console/signin", params={"token": f"wrong{i}"}).status_code for i in range(12)]
        assert statuses[:11] == [401] * 11  # the limit is 10 failures; the 11th is still answered
        assert statuses[-1] == 429
        # While throttled, even a good link waits: guessing gains nothing.
        link = signin.new_signin_link(Store(tmp_path), "http://testserver")
        assert client.get(link).status_code == 429


def test_expired_signin_token_is_refused(tmp_path):
    store = Store(tmp_path)
    link = signin.new_signin_link(store, "http://x", ttl=-1)
    token = link.split("token=")[1]
    assert signin.sign_in(store, token) is None
    assert signin.sign_in(store, "") is None


def test_vendored_front_end_files_match_their_recorded_hashes():
    table = (VENDOR / "VENDORED.md").read_text()
    rows = re.findall(r"^\| (\S+) \| .* \| ([0-9a-f]{64}) \|$", table, flags=re.M)
    assert {name for name, _ in rows} == {"htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in rows:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_train_config_checks_bounds_and_fills_defaults():
    config = jobs.check_train_config({"epochs": "2", "learning_rate": ""})
    assert config["epochs"] == 2 and config["learning_rate"] == jobs.DEFAULTS.learning_rate
    with pytest.raises(ValueError, match="epochs must be between"):
        jobs.check_train_config({"epochs": "0"})
    with pytest.raises(ValueError, match="must be a number"):
        jobs.check_train_config({"learning_rate": "fast"})
    with pytest.raises(ValueError, match="job name"):
        jobs.check_job_name("Bad Name")


def test_upload_reports_bad_lines_with_their_numbers(tmp_path):
    store = Store(tmp_path)
    good = '[{"prompt": "hi", "response": [["hello"]]}]'
    with pytest.raises(jobs.DataError) as caught:
        jobs.add_dataset(store, "d.jsonl", f"{good}\nnot json\n{good}\n[{{\"prompt\": \"x\"}}]\n".encode())
    assert [line for line, _ in caught.value.problems] == [2, 4]
    assert not list((tmp_path / "console" / "datasets").iterdir())  # nothing kept
    dataset = jobs.add_dataset(store, "../../etc/d.jsonl", f"{good}\n{good}\n".encode())
    assert dataset.conversations == 2 and Path(dataset.path).parent == tmp_path / "console" / "datasets"


def test_change_keeps_model_and_adapter_and_checks_values(tmp_path):
    from qfserve.services import publishing
    from qfserve.store import services as service_store

    store = Store(tmp_path)
    service_store.publish_service(store, "keep", model="default", adapter="/some/adapter", profile="ERNIE-Lite-8K")
    changed = publishing.change(store, "keep", rpm=7, safety="strict")
    assert (changed.adapter, changed.model, changed.profile, changed.rpm, changed.safety) == (
        "/some/adapter", "default", "ERNIE-Lite-8K", 7, "strict")
    with pytest.raises(publishing.PublishError, match="tpm must be a positive integer"):
        publishing.change(store, "keep", tpm=-1)
    with pytest.raises(publishing.PublishError, match="unknown profile"):
        publishing.change(store, "keep", profile="GPT-9")
    with pytest.raises(publishing.PublishError, match="no service"):
        publishing.change(store, "nosuch", rpm=1)
    with pytest.raises(publishing.PublishError, match="model file not found"):
        publishing.publish(store, "other", model=str(tmp_path / "missing.gguf"), profile="ERNIE-Speed-8K")


def test_console_command_prints_a_link_and_says_when_no_server_runs(tmp_path):
    from conftest import cli

    result = cli(tmp_path, "console", "--port", "18777")
    assert "http://127.0.0.1:18777/console/signin?token=" in result.stdout
    assert "No server seems to run" in result.stdout


def test_a_job_left_running_by_a_stopped_server_is_settled_from_its_files(tmp_path):
    from qfserve.sft import manifest
    from qfserve.store import console as console_store

    store = Store(tmp_path)
    dataset = console_store.add_dataset(store, "d.jsonl", str(tmp_path / "d.jsonl"), 1)
    finished = console_store.add_job(store, "done", dataset.id, str(tmp_path / "done"), {})
    crashed = console_store.add_job(store, "crashed", dataset.id, str(tmp_path / "crashed"), {})
    for job in (finished, crashed):
        console_store.update_job(store, job.id, status="running", pid=999999)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / manifest.MANIFEST_NAME).write_text("{}")
    runner = jobs.JobRunner(store)  # a new server: it runs neither process
    assert runner.job(finished.id).status == "succeeded"
    settled = runner.job(crashed.id)
    assert settled.status == "failed" and "ended with the server" in settled.error
    assert console_store.get_job(store, crashed.id).status == "failed"  # stored, not just shown
