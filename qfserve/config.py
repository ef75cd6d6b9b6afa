"""Settings. Precedence: command-line flag > environment (QFSERVE_…) > `qfserve.toml` in the data dir > default."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from qfserve.engine.llamacpp.protocol import DEFAULT_CTX_PER_SEQ, physical_cores
from qfserve.limits.days import DEFAULT_TIMEZONE, check_timezone

CONFIG_FILE = "qfserve.toml"
PID_FILE = "qfserve.pid"  # written by a running server, read by `qfserve safety reload`


def default_data_dir() -> Path:
    """The per-user data folder (e.g. ~/.local/share/qfserve): the same from every working
    directory, so a command run elsewhere never starts a new empty database by accident."""
    from platformdirs import user_data_path

    return user_data_path("qfserve")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QFSERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8360
    data_dir: Path = Field(default_factory=default_data_dir)
    log_level: str = "info"
    log_json: bool = False
    access_log: bool = Field(True, description="one log line per request (qfserve.access)")
    drain_seconds: float = Field(30.0, ge=0, description="after SIGTERM: how long running answers may finish")

    # Embedded engine
    parallel: int = Field(4, ge=1, le=64, description="max concurrent sequences per base model")
    threads: int = Field(default_factory=physical_cores, ge=1)
    queue_size: int = Field(64, ge=0, description="requests waiting beyond the running ones before 336100")
    tool_call_threshold: float = Field(
        0.1, ge=0.0, le=1.0,
        description="tool_choice auto: call when the call marker is at least this likely at the answer's start",
    )
    # engine (issue 15): KV cells (a region per sequence, or one shared pool), admission by predicted wait
    kv_cells: int | None = Field(None, ge=256, description="KV cells per base model, all sequences together "
                                 f"(default: parallel * ctx_per_seq, ctx_per_seq defaulting to {DEFAULT_CTX_PER_SEQ})")
    ctx_per_seq: int = Field(0, ge=0, description="most KV cells one sequence may hold (prompt + answer); "
                             "0: kv_cells / parallel, or the whole pool with kv_unified")
    kv_unified: bool = Field(False, description="one KV pool the sequences share instead of a region each")
    kv_type: str = Field("f16", pattern="^(f16|q8_0)$", description="KV cell type: f16, or q8_0 (half the memory, "
                         "answers independent of batching, long prompts prefill slower)")
    max_queue_wait: float = Field(30.0, gt=0, description="seconds a request may wait for a sequence before 336100")
    stream_interval: float = Field(0.05, ge=0, le=1, description="seconds tokens mid-answer may wait in the engine "
                                   "to travel to the server together (0: each token at once)")

    # Access control and limits
    limiter: str = Field("local", pattern="^(local|redis)$")
    redis_url: str | None = None
    # scale-out (issue 11): PostgreSQL instead of the data dir's SQLite file (postgresql://user:pw@host/db)
    database_url: str | None = None
    max_in_flight: int = Field(0, ge=0, description="chat requests in flight before answering 4 (0: no ceiling)")
    quota_timezone: str = Field(DEFAULT_TIMEZONE, description="where an app's daily quota day starts and ends")
    auth_fail_limit: int = 20
    auth_fail_window: float = 60.0
    signature_clock_skew: int = 300
    signature_max_expiration: int = 3600

    # Content safety. In the environment: QFSERVE_SAFETY_LEXICON="a.tsv:b.tsv" (PATH-style) and
    # QFSERVE_SAFETY_CATEGORY_LEVELS="ads=2,politics=3", the forms the CLI flags take.
    safety_lexicon: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    safety_allow: Path | None = None
    safety_category_levels: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)

    @field_validator("safety_lexicon", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        return split_paths([value]) if isinstance(value, str) else value

    @field_validator("safety_category_levels", mode="before")
    @classmethod
    def _parse_levels(cls, value: Any) -> Any:
        if isinstance(value, str):
            from qfserve.safety import parse_category_levels

            return parse_category_levels(value)
        return value

    # User memory
    memory_max_per_user: int = 200
    memory_max_block_chars: int = 800
    memory_semantic: bool = Field(False, description="add an embedding score to recall (needs qfserve[semantic])")

    # security (issue 16); SECURITY.md explains each
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="proxy addresses/networks whose X-Forwarded-For/-Proto is believed")
    public_url: str | None = Field(None, description="base URL clients use to reach this server (service list)")
    metrics_token: str | None = Field(None, description="bearer token for /metrics; unset: loopback clients only")
    models_dir: Path | None = Field(None, description="model GGUF files must live under this folder")
    max_chat_body: int = Field(4 * 1024 * 1024, ge=1024, description="largest chat request body, bytes")
    max_token_body: int = Field(16 * 1024, ge=256, description="largest /oauth/2.0/token body, bytes")
    max_small_body: int = Field(64 * 1024, ge=256, description="largest body on every other route, bytes")
    max_upload_body: int = Field(16 * 1024 * 1024, ge=1024, description="largest fine-tuning data upload (console), bytes")
    header_timeout: float = Field(10.0, gt=0, description="seconds to receive a request's headers")
    body_timeout: float = Field(60.0, gt=0, description="seconds to receive a request's body")
    keep_alive_timeout: int = Field(5, ge=1, description="seconds an idle keep-alive connection stays open")
    max_connections: int = Field(512, ge=1, description="concurrent connections and requests before HTTP 503")
    reject_replayed_signatures: bool = Field(True, description="refuse a bce-auth-v1 signature seen before")
    token_purge_interval: float = Field(3600.0, gt=0, description="seconds between purges of expired tokens")

    _toml_path: Path | None = None

    @field_validator("quota_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        # QFSERVE_TRUSTED_PROXIES="10.0.0.1,10.1.0.0/16"; flags and toml give lists.
        if isinstance(value, str):
            value = [value]
        proxies = [part.strip() for item in value or () for part in str(item).split(",") if part.strip()]
        for proxy in proxies:
            if proxy != "*":
                ipaddress.ip_network(proxy, strict=False)  # ValueError names the bad entry
        return proxies

    @property
    def kv_pool_cells(self) -> int:  # engine (issue 15)
        return self.kv_cells or self.parallel * (self.ctx_per_seq or DEFAULT_CTX_PER_SEQ)

    @property
    def seq_limit(self) -> int:  # engine (issue 15): what one sequence may hold
        pool = self.kv_pool_cells
        if self.kv_unified:
            return min(self.ctx_per_seq or pool, pool)
        return min(self.ctx_per_seq or pool // self.parallel, pool // self.parallel)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        if cls._toml_path is not None and cls._toml_path.exists():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)


def split_paths(values: list) -> list[Path]:
    """Paths given PATH-style (a.tsv:b.tsv) or one per item."""
    return [Path(part) for value in values for part in str(value).split(os.pathsep) if part.strip()]


def load_settings(**flags: Any) -> Settings:
    """Build settings from flags (None means not given), the environment and the data dir's toml file."""
    given = {k: v for k, v in flags.items() if v is not None and v != [] and v != ()}
    data_dir = Path(given.get("data_dir") or os.environ.get("QFSERVE_DATA_DIR") or default_data_dir())
    Settings._toml_path = data_dir / CONFIG_FILE
    try:
        return Settings(**given)
    finally:
        Settings._toml_path = None


# scale-out (issue 11)
def database_url_for(data_dir: Path) -> str | None:
    """The database URL CLI commands use for a data dir: QFSERVE_DATABASE_URL, else `database_url` in
    the data dir's qfserve.toml, else None (the SQLite file in the data dir)."""
    if os.environ.get("QFSERVE_DATABASE_URL"):
        return os.environ["QFSERVE_DATABASE_URL"]
    toml_file = Path(data_dir) / CONFIG_FILE
    if toml_file.is_file():
        import tomllib

        try:
            return tomllib.loads(toml_file.read_text(encoding="utf-8")).get("database_url") or None
        except (tomllib.TOMLDecodeError, OSError):
            return None
    return None
