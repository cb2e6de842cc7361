"""Service settings: one frozen object built at the entry point (env ``VIGIL_…``, nested with ``__``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.manifest import AdaptivePolicy, AlertPolicy, Manifest

Role = Literal["score", "read", "admin"]
PLACEHOLDER_SECRETS = (
    "changeme",
    "change-me",
    "replace",
    "secret",
    "password",
    "example",
    "placeholder",
    "xxxx",
)


class BatchingSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_batch_size: int = Field(256, ge=1)
    max_wait_ms: float = Field(1.0, ge=0)
    queue_capacity: int = Field(8192, ge=1)  # windows waiting per model; beyond it requests get 503
    # Windows that waited longer than this for the worker fail with 503 instead of running (0: never).
    max_queue_wait_ms: float = Field(1000.0, ge=0)


class AlertSettings(AlertPolicy):
    """The lifecycle for bundles that carry no alert policy of their own (bundles since the false-alert-rate
    calibration carry one), and the retention of the alert event stream."""

    stream_maxlen: int = Field(100_000, ge=100)

    def policy(self) -> AlertPolicy:
        return AlertPolicy.model_validate(self.model_dump(exclude={"stream_maxlen"}))


class AlertPolicyOverride(BaseModel):
    """Per-model changes to the bundle's alert policy (``VIGIL_ALERTS_BY_MODEL``): only the fields given replace
    the bundle's, e.g. ``{"tvnet": {"thresholds": "adaptive"}}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    m: int | None = Field(None, ge=1)
    exit_ratio: float | None = Field(None, gt=0, le=1)
    thresholds: Literal["fixed", "adaptive"] | None = None
    adaptive: AdaptivePolicy | None = None


class APIKey(BaseModel):
    """A client key: ``name`` appears in logs, the key itself never does."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    key: SecretStr
    roles: frozenset[Role]

    @field_validator("key")
    @classmethod
    def _strong(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if len(secret) < 16:
            raise ValueError("API keys must be at least 16 characters")
        if any(word in secret.lower() for word in PLACEHOLDER_SECRETS):
            raise ValueError("API key looks like a placeholder; generate one (e.g. `openssl rand -hex 24`)")
        return value


class FeedSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    client_buffer: int = Field(1000, ge=1)  # events queued per WebSocket client before it is closed
    send_timeout_s: float = Field(5.0, gt=0)  # a client that cannot take an event this long is closed


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_nested_delimiter="__", frozen=True)

    models_dir: Path = Path("artifacts/models")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_pool_size: int = Field(32, ge=1)
    redis_timeout_s: float = Field(2.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    intra_op_threads: int = Field(0, ge=0)  # 0 = ONNX Runtime's choice (one per core)
    # Idle intra-op threads busy-wait for work by default in ONNX Runtime; in a server that steals the cores
    # the event loop and Redis need between batches (bench/profile_service.py shows it).
    intra_op_spinning: bool = False
    window_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    # Recent scores kept per stream for the live view (0: none): ~33 bytes of Redis each with 3 top sensors,
    # sized so that a stream's keys stay within 1.3x its raw float32 window (BENCHMARKS.md, cost growth).
    history_points: int = Field(32, ge=0)
    max_points_per_request: int = Field(10_000, ge=1)
    # How far a point's ts may be ahead of its stream's last ts (0: no bound). One wild ts (1e300) would leave
    # every later point stale; the default admits gaps of 31 years in epoch seconds, 11.6 days in epoch ns.
    max_ts_jump: float = Field(1e15, ge=0)
    # A request's claim on the windows it scores lapses after this long if it dies holding it: then the next
    # request of the stream scores them (service/windows.py).
    scoring_claim_s: float = Field(10.0, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    top_contributions: int = Field(3, ge=1)
    redis_cluster: bool = False  # VIGIL_REDIS_URL names one node of a Redis Cluster
    max_batch_items: int = Field(1000, ge=1)  # streams in one POST /score/batch
    max_inflight_requests: int = Field(256, ge=1)  # HTTP requests in progress; beyond it 503 at once
    # Requests in progress per API key (None: a quarter of max_inflight_requests); beyond it 429 for that key.
    max_inflight_per_key: int | None = Field(None, ge=1)
    body_timeout_s: float = Field(10.0, gt=0)  # the whole body must arrive within this; else 408
    max_header_bytes: int = Field(32 * 1024, ge=1024)  # request line + headers; beyond it 431 and close
    batching: BatchingSettings = BatchingSettings()
    alerts: AlertSettings = AlertSettings()
    alerts_by_model: dict[str, AlertPolicyOverride] = Field(default_factory=dict)  # over the bundle's policy
    feed: FeedSettings = FeedSettings()
    api_keys: list[APIKey] = Field(default_factory=list)
    auth_disabled: bool = False  # only for local development: every route opens without a key
    cors_origins: list[str] = Field(default_factory=list)  # CORS stays off unless origins are listed
    workers: int = Field(1, ge=1)
    log_level: str = "info"

    @model_validator(mode="after")
    def _keys_or_explicitly_open(self) -> Settings:
        if not self.api_keys and not self.auth_disabled:
            raise ValueError(
                "no API keys configured: set VIGIL_API_KEYS (JSON list of {name, key, roles}) "
                "or VIGIL_AUTH_DISABLED=true for local development"
            )
        names = [k.name for k in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        return self

    def alert_policy_for(self, manifest: Manifest) -> AlertPolicy:
        """The bundle's alert policy (the service default for bundles without one), with the fields of
        ``alerts_by_model[name]`` replacing it. Raises ``ValueError`` when the result is inconsistent."""
        base = manifest.alerts or self.alerts.policy()
        override = self.alerts_by_model.get(manifest.name)
        if override is None:
            return base
        return AlertPolicy.model_validate({**base.model_dump(), **override.model_dump(exclude_none=True)})
