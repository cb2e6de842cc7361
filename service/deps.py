"""The components one app owns, and ``Annotated`` dependency aliases for the routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from service.alerts import AlertTracker
from service.auth import Principal, require
from service.feed import FeedHub
from service.history import ScoreHistory
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.scorer import StreamScorer
from service.settings import Settings
from service.windows import WindowStore


@dataclass
class Components:
    settings: Settings
    redis: Redis
    metrics: Metrics
    models: ModelRegistry
    windows: WindowStore
    alerts: AlertTracker
    scorer: StreamScorer
    history: ScoreHistory


async def get_components(request: Request) -> Components:  # async: no thread-pool hop per request
    components: Components = request.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(get_components)]


async def get_feed(request: Request) -> FeedHub:
    hub: FeedHub = request.app.state.feed
    return hub


ScoreKey = Annotated[Principal, Depends(require("score"))]
ReadKey = Annotated[Principal, Depends(require("read"))]
AdminKey = Annotated[Principal, Depends(require("admin"))]
