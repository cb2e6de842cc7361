"""Wire models of the HTTP API (documented in the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

STREAM_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
StreamId = Annotated[str, StringConstraints(pattern=STREAM_ID_PATTERN)]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Level = Literal["normal", "warning", "critical"]
PENDING = (
    "points of this request whose scores are not final: held until their window is due, or answered here "
    "while the store could not record them (then the stream's next request answers them again, the same, "
    "with their alert update)"
)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Point(_Wire):
    ts: float = Field(description="timestamp (any unit); strictly increasing within a stream")
    values: list[float] = Field(description="one value per sensor, in the model's feature order")


class StreamScoreRequest(_Wire):
    stream_id: StreamId = Field(description="client-chosen stream id: 1-128 characters of [A-Za-z0-9._:-]")
    points: list[Point] = Field(min_length=1)
    model: ModelName | None = Field(None, description="model name; binds to the stream on first use")

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "stream_id": "press-7",
                    "points": [{"ts": 1700000000, "values": [0.1, 0.4, 0.3]}],
                    "model": "tvnet",
                }
            ]
        },
    )


class WindowScoreRequest(_Wire):
    """Stateless mode: score one whole window ``[L][C]`` sent in the request; no stream state is touched."""

    window: list[list[float]] = Field(min_length=1, description="L rows of C sensor values")
    model: ModelName | None = None


class BatchScoreRequest(_Wire):
    """Many streams in one request (gateways aggregating sensors); each item is a stream-mode body."""

    items: list[StreamScoreRequest] = Field(min_length=1)


class Contribution(_Wire):
    sensor: str
    share: float


class PointScore(_Wire):
    ts: float
    score: float
    level: Level
    contributions: list[Contribution]


class DroppedPoint(_Wire):
    ts: float
    reason: Literal["duplicate", "stale"]


class AlertEvent(_Wire):
    id: str | None = None
    stream_id: str
    model: str
    state: Literal["pending", "firing", "resolved", "cancelled"]
    severity: Literal["warning", "critical"]
    ts: float
    started_ts: float
    peak_score: float
    threshold: float
    sensors: list[str]
    escalated: bool = Field(False, description="a firing alert that rose from warning to critical")


class StreamScoreResponse(_Wire):
    stream_id: str
    model: str
    version: str
    accepted: int
    dropped: list[DroppedPoint]
    pending: int = Field(description=PENDING)
    scores: list[PointScore]
    alerts: list[AlertEvent]


class WindowScoreResponse(_Wire):
    model: str
    version: str
    scores: list[PointScore] = Field(description="one per window row; ts is the row index")


class ItemError(_Wire):
    code: str
    detail: str
    status: int


class BatchItemResult(_Wire):
    stream_id: str | None
    result: StreamScoreResponse | None = None
    error: ItemError | None = None


class BatchScoreResponse(_Wire):
    items: list[BatchItemResult]


class ColumnScores(_Wire):
    """Scored points as one array per field (``?format=columns``); sensor indices refer to ``sensors``."""

    ts: list[float]
    score: list[float]
    level: list[Level]
    top_sensors: list[list[int]] = Field(
        description="per point, the indices of its top sensors, largest share first"
    )
    top_shares: list[list[float]] = Field(description="per point, those sensors' shares")


class StreamScoreColumnsResponse(_Wire):
    stream_id: str
    model: str
    version: str
    accepted: int
    dropped: list[DroppedPoint]
    pending: int = Field(description=PENDING)
    sensors: list[str] = Field(description="the model's sensor names, in the order `top_sensors` indexes")
    scores: ColumnScores
    alerts: list[AlertEvent]


class WindowScoreColumnsResponse(_Wire):
    model: str
    version: str
    sensors: list[str]
    scores: ColumnScores


class BatchItemColumnsResult(_Wire):
    stream_id: str | None
    result: StreamScoreColumnsResponse | None = None
    error: ItemError | None = None


class BatchScoreColumnsResponse(_Wire):
    items: list[BatchItemColumnsResult]
