"""Encryption at rest for secrets the server must read back (the IAM Secret Access Key keys an HMAC,
so unlike the Secret Key it can't be stored as a hash).

Fernet (AES-128-CBC + HMAC-SHA256, from the `cryptography` package) under a key kept outside the
database: `QFSERVE_SECRET_KEY` when set, else the file `secret.key` (mode 0600) in the data dir,
created on first use. A copy of `qfserve.db` alone then reveals no usable secret. Sealed values are
stored as `enc1:<fernet token>`; a value without the prefix is a plaintext row from before
encryption, sealed by `Store` when it opens the database.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "secret.key"
KEY_ENV = "QFSERVE_SECRET_KEY"
PREFIX = "enc1:"


class SecretKeyError(RuntimeError):
    """The key is missing, malformed, or not the one the database was sealed with."""


class SecretBox:
    def __init__(self, key: bytes | str):
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretKeyError(
                "the secret key is not a Fernet key (32 url-safe base64 bytes); make one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
            ) from None

    def seal(self, plaintext: str) -> str:
        return PREFIX + self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX):].encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise SecretKeyError(
                f"a stored secret can't be decrypted: {KEY_ENV} or {KEY_FILE} is not the key it was sealed with"
            ) from None


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def load_secret_box(data_dir: str | os.PathLike, *, sealed_rows_exist: bool) -> SecretBox:
    """The data dir's box: from the environment, else the key file, else a new key file.

    A new key is never made for a database that already holds sealed secrets: they would become
    unreadable, so that is an error naming what to restore.
    """
    from_env = os.environ.get(KEY_ENV)
    if from_env:
        return SecretBox(from_env.strip())
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        if sealed_rows_exist:
            raise SecretKeyError(
                f"{path} is missing but the database holds encrypted IAM secret keys: restore the file "
                f"(or set {KEY_ENV}; every gateway on one database needs the same key); "
                "`qfserve app rotate` issues new keys if it is lost for good"
            )
        # Written whole under a private name, then linked into place: a process racing us (CLI and
        # server starting together) either wins the link or reads the complete file of the winner.
        temp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
        fd = os.open(temp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key() + b"\n")
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return SecretBox(path.read_bytes().strip())
