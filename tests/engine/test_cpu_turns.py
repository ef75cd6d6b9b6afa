"""Workers that each use most of the cores take turns at llama_decode (engine/llamacpp/cpu_turns.py)."""

import fcntl
import os

import pytest

from qfserve.engine.llamacpp.cpu_turns import CpuTurns, default_lock_path
from qfserve.engine.llamacpp.protocol import physical_cores


def _held_elsewhere(path) -> bool:
    """Whether another open file description cannot take the lock now (as another worker)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_worker_using_all_cores_holds_the_lock_while_it_decodes(tmp_path, monkeypatch):
    path = tmp_path / "decode.lock"
    monkeypatch.setenv("QFSERVE_DECODE_LOCK", str(path))
    turns = CpuTurns(physical_cores())
    try:
        with turns:
            assert _held_elsewhere(path)
        assert not _held_elsewhere(path)
    finally:
        turns.close()


def test_off_and_a_small_share_of_the_cores_take_no_turns(tmp_path, monkeypatch):
    monkeypatch.setenv("QFSERVE_DECODE_LOCK", "off")
    assert CpuTurns(physical_cores()).fd is None
    if physical_cores() >= 2:
        monkeypatch.setenv("QFSERVE_DECODE_LOCK", str(tmp_path / "decode.lock"))
        assert CpuTurns(physical_cores() // 2).fd is None  # two such workers fit the cores


def test_the_default_file_is_per_user():
    assert default_lock_path().endswith(f"qfserve-decode-{os.getuid()}.lock")


@pytest.mark.skipif(os.getuid() != 0, reason="needs to create a file owned by another user")
def test_a_file_another_user_owns_is_not_used(tmp_path, monkeypatch):
    path = tmp_path / "decode.lock"
    path.write_text("")
    os.chown(path, 65534, 65534)
    path.chmod(0o666)
    monkeypatch.setenv("QFSERVE_DECODE_LOCK", str(path))
    assert CpuTurns(physical_cores()).fd is None
