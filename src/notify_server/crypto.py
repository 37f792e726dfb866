"""Encryption at rest for secrets, and where the deployment's one key is found."""

import base64
import binascii
import hashlib
import hmac
import os
import tempfile
from pathlib import Path

import orjson
from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.engine import make_url

from notify_server.config import Settings
from notify_server.errors import ServiceUnavailable

KEY_FILE_NAME = "notify-server.key"
# What loading a private key a tenant gave can raise: malformed PEM, or a well-formed key of a
# type or curve OpenSSL does not support (UnsupportedAlgorithm, or its InternalError).
UNLOADABLE_KEY = (ValueError, TypeError, UnsupportedAlgorithm, InternalError)
# HMAC label: the stored fingerprint identifies the key without being a hash of it alone.
FINGERPRINT_LABEL = b"notify-server deployment secret key fingerprint v1"
MAKE_A_KEY = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


class SecretKeyError(Exception):
    """The key is missing, malformed or not this deployment's: one line for the operator."""


class SecretKeyNotChecked(ServiceUnavailable):
    """A secret was needed before the key could be checked (the database was down): 503."""


def key_file_for(database_url: str, key_file: str | None = None) -> Path:
    """Where the key file is, the same for every command whatever its working directory:
    NOTIFY_SECRET_KEY_FILE; else beside a SQLite database file (the key travels with the
    data); else under $XDG_DATA_HOME (PostgreSQL, in-memory SQLite)."""
    if key_file:
        return Path(key_file).expanduser().absolute()
    url = make_url(database_url)
    database = url.database or ""
    if url.query.get("uri") == "true":  # sqlite:///file:path?mode=...&uri=true
        database = database.removeprefix("file:")
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if url.get_backend_name() == "sqlite" and not in_memory:
        return Path(os.path.abspath(database)).parent / KEY_FILE_NAME
    return _data_home() / "notify-server" / "secret.key"


def _data_home() -> Path:
    # The XDG spec says a relative XDG_DATA_HOME is to be ignored.
    configured = os.environ.get("XDG_DATA_HOME", "")
    return Path(configured) if os.path.isabs(configured) else Path.home() / ".local" / "share"


def short(fingerprint: str) -> str:
    return fingerprint[:12] + "…"


class SecretBox:
    """Holds the Fernet key. `load` (the start-up check) decides whether a key file may be
    generated; used without it, the box loads or generates the key when first needed."""

    def __init__(self, key: str | None, key_file: str | Path | None) -> None:
        self._key = (key or "").strip() or None
        self._key_file = Path(key_file) if key_file else None
        self._fernet: Fernet | None = None
        self._raw = b""
        self.held = False

    def hold(self) -> None:
        """Until release(), nothing is sealed or opened: the key is not checked yet."""
        self.held = True

    def release(self) -> None:
        self.held = False

    @property
    def source(self) -> str:
        """Where the key comes from, for messages (never the key itself)."""
        return "NOTIFY_SECRET_KEY" if self._key else str(self._key_file)

    def load(self, *, create: bool) -> bool:
        """Reads the key, generating the key file only if `create`; False if there is none."""
        if self._fernet is not None:
            return True
        if self._key:
            text: bytes | None = self._key.encode()
        elif self._key_file is None:
            raise SecretKeyError("no secret key: set NOTIFY_SECRET_KEY")
        else:
            text = self._read_key_file()
            if text is None and create:
                text = self._create_key_file()
        if text is None:
            return False
        try:
            self._fernet = Fernet(text)
            self._raw = base64.urlsafe_b64decode(text)
        except (ValueError, binascii.Error):
            raise SecretKeyError(
                f"the secret key ({self.source}) is not a Fernet key"
                f" (32 url-safe base64-encoded bytes): make one with {MAKE_A_KEY}"
            ) from None
        return True

    def fingerprint(self) -> str:
        self._loaded()
        return hmac.new(self._raw, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:32]

    def derived_key(self, label: bytes) -> bytes:
        """A key of its own for one purpose (e.g. signing console sessions), from this one."""
        self._loaded()
        return hmac.new(self._raw, label, hashlib.sha256).digest()

    def opens(self, token: str) -> bool:
        try:
            self._loaded().decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def seal(self, secrets: dict[str, str]) -> str:
        return self._cipher().encrypt(orjson.dumps(secrets)).decode()

    def open(self, token: str) -> dict[str, str]:
        return orjson.loads(self._cipher().decrypt(token.encode()))

    def _cipher(self) -> Fernet:
        if self.held:
            raise SecretKeyNotChecked()
        return self._loaded()

    def _loaded(self) -> Fernet:
        if self._fernet is None:
            self.load(create=True)
        assert self._fernet is not None
        return self._fernet

    def _read_key_file(self) -> bytes | None:
        assert self._key_file is not None
        try:
            return self._key_file.read_bytes().strip()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise SecretKeyError(
                f"cannot read the secret key file {self._key_file}: {error.strerror}"
            ) from None

    def _create_key_file(self) -> bytes:
        path = self._key_file
        assert path is not None
        key = Fernet.generate_key()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Written whole under a temporary name (mode 0600), then linked into place: a
            # process starting beside this one reads either no file or the complete key,
            # and the one that links second keeps the first one's key.
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".notify-server-key-")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(key)
                    file.flush()
                    os.fsync(file.fileno())
                os.link(temporary, path)
            except FileExistsError:
                return path.read_bytes().strip()
            finally:
                os.unlink(temporary)
        except OSError as error:
            raise SecretKeyError(
                f"cannot create the secret key file {path}: {error.strerror}"
                " (set NOTIFY_SECRET_KEY or NOTIFY_SECRET_KEY_FILE)"
            ) from None
        return key


def secret_box_for(settings: Settings) -> SecretBox:
    return SecretBox(
        settings.secret_key, key_file_for(settings.database_url, settings.secret_key_file)
    )
