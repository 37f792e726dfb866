"""Encryption at rest for push-credential secrets."""

import os
from pathlib import Path

import orjson
from cryptography.fernet import Fernet


class SecretBox:
    """Holds the Fernet key; created lazily so a server that stores no secrets writes no key."""

    def __init__(self, key: str | None, key_file: str) -> None:
        self._key = key
        self._key_file = Path(key_file)
        self._fernet: Fernet | None = None

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(self._key or self._load_or_create_key_file())
        return self._fernet

    def _load_or_create_key_file(self) -> bytes:
        try:
            # O_EXCL: two processes starting together agree on one key.
            fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._key_file.read_bytes().strip()
        key = Fernet.generate_key()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key

    def seal(self, secrets: dict[str, str]) -> str:
        return self._cipher().encrypt(orjson.dumps(secrets)).decode()

    def open(self, token: str) -> dict[str, str]:
        return orjson.loads(self._cipher().decrypt(token.encode()))
