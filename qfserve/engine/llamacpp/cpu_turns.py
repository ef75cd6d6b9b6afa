"""One llama_decode at a time on this machine among workers that each use most of its cores.

ggml's CPU threads meet at a spinning barrier after every operation of the graph. Two workers with
`threads` = the physical cores each (two base models, or two servers on one machine) put twice as
many spinning threads as cores: a thread then spins through its whole time slice waiting for a
peer that is not running, at every barrier. Measured on the 2-core dev VM: decodes went from ~6 ms
to seconds, 40-token answers took 100 s. Taking turns (an exclusive `flock` on one file per
machine around each decode) gives each worker its share instead; the lock costs two system calls
per step. Workers whose threads fit twice into the cores (an operator who split the cores between
models) do not take turns. The file is per user, and used only if this user owns it (someone else
holding it could stall the server). QFSERVE_DECODE_LOCK names the file, or `off`.
"""

from __future__ import annotations

import os
import tempfile

try:
    import fcntl
except ImportError:  # not POSIX: no turns
    fcntl = None

from qfserve.engine.llamacpp.protocol import physical_cores



def default_lock_path() -> str:
    user = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"qfserve-decode-{user}.lock")


class CpuTurns:
    def __init__(self, threads: int) -> None:
        path = os.environ.get("QFSERVE_DECODE_LOCK") or default_lock_path()
        self.fd: int | None = None
        if fcntl is None or path.lower() == "off" or 2 * threads <= physical_cores():
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError:  # an unwritable temp folder, or another user's file: run without turns
            return
        if os.fstat(fd).st_uid != os.getuid():
            os.close(fd)
            return
        self.fd = fd

    def __enter__(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
