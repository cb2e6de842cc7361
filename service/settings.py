"""Service settings: one frozen object built at the entry point (env ``VIGIL_…``, nested with ``__``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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
    # While the last batch's oldest window had waited longer than this, new requests get 503 at once (0: never).
    max_queue_delay_ms: float = Field(250.0, ge=0)


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


ALERT_LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# Labels every posted alert carries from the event itself; static labels may not replace them.
EVENT_LABELS = frozenset({"alertname", "stream", "model", "severity"})


class AlertmanagerSettings(BaseModel):
    """Delivery of alert lifecycles to Alertmanager's v2 API (``VIGIL_ALERTMANAGER__…``); off while ``urls``
    is empty. Every URL gets every alert, as Prometheus does with its Alertmanagers."""

    model_config = ConfigDict(frozen=True)

    urls: list[str] = Field(
        default_factory=list
    )  # e.g. ["http://alertmanager:9093"]; /api/v2/alerts is added
    labels: dict[str, str] = Field(default_factory=dict)  # static labels on every alert, e.g. {"env": "prod"}
    # Firing alerts are posted again this often; each post says it expires after 4 intervals (as Prometheus
    # does), so an Alertmanager that restarted relearns them and one that hears nothing resolves them.
    resend_interval_s: float = Field(60.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)  # per POST
    backoff_initial_s: float = Field(0.5, gt=0)  # retries after 5xx or no answer: doubling, with jitter
    backoff_max_s: float = Field(30.0, gt=0)
    # One replica (or worker) delivers at a time, holding this lease in Redis; another takes over within it.
    lease_s: float = Field(15.0, gt=0)
    batch_size: int = Field(200, ge=1)  # events per read, alerts per POST

    @field_validator("urls")
    @classmethod
    def _http(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"Alertmanager URL {url!r} must start with http:// or https://")
        # Each Alertmanager's progress is kept under its host, port and path: two URLs may not share them.
        places = [(p.hostname, p.port, p.path.rstrip("/")) for p in map(urlsplit, urls)]
        if len(set(places)) != len(places):
            raise ValueError("Alertmanager URLs must differ in host, port or path")
        return [url.rstrip("/") for url in urls]

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            if not re.fullmatch(ALERT_LABEL_NAME, name) or name.startswith("__"):
                raise ValueError(f"alert label name {name!r} is not a valid Prometheus label name")
            if name in EVENT_LABELS:
                raise ValueError(f"alert label {name!r} comes from each event and cannot be set statically")
        return labels


class SourceClock(BaseModel):
    """A shifted clock for the poller: it reads ``origin`` at wall-clock time ``at`` (epoch s) and runs ``speed``
    times as fast, so a stored range plays as if live (demos, tests). Replicas given the same values agree."""

    model_config = ConfigDict(frozen=True)

    origin: float
    at: float
    speed: float = Field(1.0, gt=0)


class SourceSettings(BaseModel):
    """Polling of source-backed models (bundles trained with ``vigil train --prometheus``):
    ``VIGIL_SOURCES__…``. Off for a model while no Prometheus URL is set for it."""

    model_config = ConfigDict(frozen=True)

    prometheus_url: str | None = None  # e.g. http://prometheus:9090, for every source-backed model
    prometheus_urls: dict[str, str] = Field(default_factory=dict)  # by model name, over prometheus_url
    # Rows newer than now - settle_s are not read yet: a scrape may land late, and Prometheus answers a grid
    # point without its sample with an older one (its 5 min lookback) until it does.
    settle_s: float = Field(10.0, ge=0)
    poll_interval_s: float | None = Field(None, gt=0)  # None: every step of the source
    # After an outage the missed range is read back up to this far; older rows are skipped (a gap).
    catch_up_s: float = Field(3600.0, gt=0)
    # Rows one poll reads at most: a longer catch-up goes on in pieces, each fed and recorded before the next
    # (bounded memory: rows x queries x hosts; progress kept if a later piece fails).
    max_rows_per_poll: int = Field(1000, ge=1)
    # Where a model with no progress in Redis starts: epoch s; None: one window before now, read whole even beyond
    # catch_up_s (scores at once).
    start_at: float | None = None
    lease_s: float = Field(10.0, gt=0)  # one replica polls a source; another takes over within this
    timeout_s: float = Field(10.0, gt=0)  # per Prometheus request
    backoff_initial_s: float = Field(1.0, gt=0)  # after a failed poll: doubling, with jitter
    backoff_max_s: float = Field(30.0, gt=0)
    # vigil_stream_score / vigil_stream_level{model, stream} for source-backed streams (the first
    # max_exported_streams streams of this process; every stream is one series of each).
    export_scores: bool = False
    max_exported_streams: int = Field(100, ge=0)
    clock: SourceClock | None = None

    @field_validator("prometheus_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("the Prometheus URL must start with http:// or https://")
        return url.rstrip("/") if url else url

    @field_validator("prometheus_urls")
    @classmethod
    def _http_urls(cls, urls: dict[str, str]) -> dict[str, str]:
        for name, url in urls.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"the Prometheus URL of model {name!r} must start with http:// or https://")
        return {name: url.rstrip("/") for name, url in urls.items()}

    def url_for(self, model: str) -> str | None:
        return self.prometheus_urls.get(model, self.prometheus_url)


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
    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    sources: SourceSettings = SourceSettings()
    # Where users open Vigil (alerts link to its live view); default http://<host>:<port>.
    public_url: str | None = None
    api_keys: list[APIKey] = Field(default_factory=list)
    auth_disabled: bool = False  # only for local development: every route opens without a key
    cors_origins: list[str] = Field(default_factory=list)  # CORS stays off unless origins are listed
    workers: int = Field(1, ge=1)
    # Freeze what start-up built out of the garbage collector's full walks (service/gcpolicy.py).
    gc_freeze: bool = True
    # "shared": the API processes send windows to one inference process per device that batches across all of
    # them (service/inference_server.py); "in_process": each process runs its own sessions (the default).
    inference: Literal["in_process", "shared"] = "in_process"
    inference_socket: Path | None = None  # set by `vigil serve` for its processes in shared mode
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
