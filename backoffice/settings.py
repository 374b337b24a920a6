"""Back-office settings from the environment or ``.env`` (cli.md, "Configuration")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///./onecard.db"
DEFAULT_KEYSTORE = "./onecard-keys.json"


def read_dotenv(path: Path = Path(".env")) -> dict[str, str]:
    """``NAME=value`` lines of a ``.env`` file (missing file: nothing)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class Settings:
    """The settings every back-office entry point reads."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    keystore: str = DEFAULT_KEYSTORE
    key_file: str | None = None
    db_pre_ping: bool | None = None
    """Test pooled PostgreSQL connections on checkout (``ONECARD_DB_PRE_PING``: ``1``/``0``); ``None``: each entry
    point's default (on, except in the API, whose requests are retried)."""

    @classmethod
    def load(cls) -> Settings:
        """Environment first, then ``.env``, then the defaults."""
        env = {**read_dotenv(), **os.environ}
        return cls(
            database_url=env.get("ONECARD_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=env.get("ONECARD_REDIS_URL") or None,
            keystore=env.get("ONECARD_KEYSTORE") or DEFAULT_KEYSTORE,
            key_file=env.get("ONECARD_KEY_FILE") or None,
            db_pre_ping=_flag(env.get("ONECARD_DB_PRE_PING")),
        )


def _flag(value: str | None) -> bool | None:
    """``1``/``true``/``yes``/``on`` and ``0``/``false``/``no``/``off`` (any case); unset or empty: ``None``."""
    if value is None or not value.strip():
        return None
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a yes/no setting: {value!r}")
