"""Service settings: one frozen object built at the entry point (env ``VIGIL_…``, nested with ``__``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchingSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_batch_size: int = Field(256, ge=1)
    max_wait_ms: float = Field(1.0, ge=0)
    queue_capacity: int = Field(8192, ge=1)  # windows waiting per model; beyond it requests get 503


class AlertSettings(BaseModel):
    """Alert lifecycle: k of the last n points over warning (or one over critical) fires; m points in a row
    under ``exit_ratio × warning`` resolve (hysteresis)."""

    model_config = ConfigDict(frozen=True)

    k: int = Field(3, ge=1)
    n: int = Field(5, ge=1)
    m: int = Field(10, ge=1)
    exit_ratio: float = Field(0.8, gt=0, le=1)
    stream_maxlen: int = Field(100_000, ge=100)


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
    window_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    max_points_per_request: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    top_contributions: int = Field(3, ge=1)
    batching: BatchingSettings = BatchingSettings()
    alerts: AlertSettings = AlertSettings()
    log_level: str = "info"
