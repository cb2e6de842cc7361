"""How many held-out periods may be disturbed, chosen by the data (``disturbed_periods="auto"``).

Leaving the held-out period with the most alerts out of the alert budget (``disturbed_periods=1``) lowers the
thresholds; whether the budget still holds on normal time the calibration did not see is a question each
bundle's own held-out periods can answer: for every setting, each period in turn is set aside, the thresholds
and lifecycle are calibrated on the others with that setting, and the set-aside period's alerts are counted at
them. The setting kept is the largest whose rate over the set-aside periods stays within the target (a period
that is disturbed counts there as it will in service: held-out time is the only normal time the calibration
has). None within it keeps every period counted (0), the setting that lifts the thresholds most. The test part
is never seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.manifest import AlertPolicy, Thresholds

CANDIDATES = (0, 1)  # one of the five held-out periods at the default four folds; more leaves too few counted

Series = list[npt.NDArray[np.floating]]
Calibrate = Callable[[Series, int], tuple[Thresholds, AlertPolicy | None]]
Count = Callable[[npt.NDArray[np.floating], Thresholds, AlertPolicy], int]


@dataclass(frozen=True)
class DisturbedChoice:
    chosen: int
    out_of_period_per_day: dict[int, float]  # by setting: alerts a day over the set-aside periods


def choose_disturbed(
    series: Series,
    target_per_day: float,
    sampling_interval_s: float,
    calibrate_on: Calibrate,
    count_alerts: Count,
    candidates: Sequence[int] = CANDIDATES,
) -> DisturbedChoice:
    """The largest of ``candidates`` whose thresholds, calibrated on every period but one, page at most
    ``target_per_day`` on the one (summed over the periods); 0 when none does. A setting must leave at least
    one of the remaining periods counted."""
    if len(series) < 2:
        return DisturbedChoice(0, {})
    days = sum(int(np.isfinite(s).sum()) for s in series) * sampling_interval_s / 86_400.0
    rates: dict[int, float] = {}
    for disturbed in candidates:
        if disturbed > len(series) - 2:
            continue
        alerts = 0
        for aside in range(len(series)):
            rest = [s for i, s in enumerate(series) if i != aside]
            thresholds, policy = calibrate_on(rest, disturbed)
            assert policy is not None  # the choice is made only with a false-alert target
            alerts += count_alerts(series[aside], thresholds, policy)
        rates[disturbed] = alerts / days if days else 0.0
    within = [d for d, rate in rates.items() if rate <= target_per_day]
    return DisturbedChoice(max(within, default=0), rates)
