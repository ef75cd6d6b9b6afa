"""Start-up of the server app (api/app.py): what `qfserve serve` asks of it beyond the routes."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from qfserve.api.app import create_app
from qfserve.config import load_settings
from scripted import ScriptedEngineBase, published


def started_freeze_count(tmp_path, **options) -> int:
    published(tmp_path, rpm=1000, tpm=100000)
    gc.unfreeze()
    try:
        with TestClient(create_app(load_settings(data_dir=tmp_path), engine_factory=ScriptedEngineBase, **options)):
            return gc.get_freeze_count()
    finally:
        gc.unfreeze()  # this test process makes many apps: none stays frozen


def test_a_server_freezes_its_start_up_heap_so_full_collections_skip_it(tmp_path):
    assert started_freeze_count(tmp_path, freeze_startup_heap=True) > 10_000


def test_an_app_made_without_asking_leaves_the_collector_alone(tmp_path):
    assert started_freeze_count(tmp_path) == 0
