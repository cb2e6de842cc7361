"""`vigil replay` against a real server: what it reports when the stream already holds the points it sends."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import redis

from service.replay import replay
from tests.service.conftest import KEYS
from tests.service.live import LiveServer


def test_replaying_into_a_stream_that_holds_the_points_says_they_were_refused(
    models_dir: Path,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
    test_series: np.ndarray,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "series.npy"
    np.save(data, test_series[:150])
    server = LiveServer(models_dir, redis_url, tmp_path / "serve.log").start()
    try:
        key = KEYS["all"][0]
        assert replay(server.url, "again", data, None, 50, None, key, quiet=True) == 0
        first = capsys.readouterr().out
        assert "replayed 150 points" in first and "refused" not in first
        levels = re.search(r"(\d+) normal, (\d+) warning, (\d+) critical", first)
        assert levels is not None and sum(map(int, levels.groups())) == 150  # the first window scores all 100
        assert replay(server.url, "again", data, None, 50, None, key, quiet=True) == 0
        second = capsys.readouterr().out
        assert "0 normal, 0 warning, 0 critical" in second
        refused = re.search(r"(\d+) points were refused as duplicates and (\d+) as stale", second)
        assert refused is not None, second
        assert int(refused.group(1)) + int(refused.group(2)) == 150 and int(refused.group(1)) > 0
        assert replay(server.url, "again", data, None, 50, None, key, quiet=True, start_ts=150) == 0
        assert "refused" not in capsys.readouterr().out  # a later start continues the stream
    finally:
        server.terminate()
