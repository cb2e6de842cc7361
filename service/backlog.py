"""When to bound a flow of requests (the whole server's, or one API key's): the step-by-step record that
:class:`service.inflight.InflightLimitMiddleware` keeps of each flow, and the rule that reads it."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

MIN_LIMIT = 4  # the fewest slots a bound leaves a flow: a flood must not starve the server to nothing


class Backlog:
    """The requests held (on average over each step) in each of the last ``STEPS`` steps and the completions in
    them, telling a backlog that grows (arrivals outpacing completions step after step, an open-loop flood)
    from one that stands (a closed loop of N clients, whatever their wait) and from a jump (clients that connect
    at once, a closed loop starting: its growth lands in one step or two, the second when the jump straddles a
    step's end). Growth means a rise in every one of the last ``STEPS`` steps of at least ``RISE_SHARE`` of the
    step's completions (arrivals over ~105 % of them), and at least ``MIN_LIMIT`` over all of them. A flow
    starts from nothing held, so a flood from idle is seen after ``STEPS`` steps, not one more."""

    STEPS = 3
    RISE_SHARE = 0.05

    def __init__(self) -> None:
        self._held: deque[float] = deque([0.0], maxlen=self.STEPS + 1)
        self._completed: deque[int] = deque(maxlen=self.STEPS)

    def record(self, held: float, completed: int) -> bool:
        """Adds a step (requests ``held`` on average, ``completed`` in it); True while the backlog grows."""
        self._held.append(held)
        self._completed.append(completed)
        if len(self._held) <= self.STEPS:
            return False
        rises = [after - before for before, after in pairwise(self._held)]
        steady = all(
            rise >= self.RISE_SHARE * done for rise, done in zip(rises, self._completed, strict=True)
        )
        return steady and self._held[-1] - self._held[0] >= MIN_LIMIT


@dataclass(frozen=True)
class Step:
    """What one flow did in one step: requests completed and refused, held on average over the step, seconds
    the completed ones spent in the server (summed), and the step's length."""

    completed: int
    refused: int
    held: float
    sojourn_s: float
    elapsed_s: float


@dataclass
class Flow:
    """One flow's recent steps, and whether it is to be bounded in the next one.

    A flow is flooded when its backlog grows while its step's requests spent over ``target_s`` in the server on
    average, or when it is refused in ``burst_steps`` steps in a row (one step of refusals can be a burst that
    drains). Once bounded it stays so until ``QUIET_STEPS`` steps in a row pass without refusal or growth: a
    flood held at its bound is refused in most steps, not all, and letting go at the first quiet one let its
    backlog grow back to the whole share before the next refusal. Never while a step's refusals are over
    ``RETRY_SHARE`` times its completions (a client retrying a refusal in a tight loop, or slow bodies): then
    its refusals, not its admitted work, load the event loop, and fewer slots would only multiply them
    (measured: wrk with 100 connections on one key served 30 requests/s with the bound, 72-81 without). An
    open loop is refused what it offers over the completions (at 3x capacity, twice them; the steps that drain
    a backlog down to a new bound refuse every arrival), a retry loop many times that (20x measured). A flow
    seen retrying is not bounded for growth again until ``RETRIED_STEPS`` quiet steps in a row have passed: a
    closed loop's held count swings as its clients' refused requests come back, which read as growth and engaged
    it again and again (measured: 32 connections refused 9,327 times in 10 s, the peak down by a third); kept for
    good, the mark left the same key's later floods unbounded (a bench's next mode)."""

    target_s: float
    burst_steps: int
    by_growth: bool = True  # whether a growing backlog floods it, or refusals alone
    backlog: Backlog = field(default_factory=Backlog)
    rate: float = 0.0  # completions per second, exponentially weighted over steps
    # The same over about SLOW_STEPS steps: what the flow completes when nothing stalls, which a stall of a
    # step or two (a full garbage collection, a slow batch) moves by a fraction only.
    slow_rate: float = 0.0
    bound_rate: float = 0.0  # the rate of the last flooded step: the bound's
    bounded: bool = False
    refused_steps: int = 0  # in a row, up to the last step
    quiet_steps: int = 0  # in a row without refusal or growth
    retried: bool = False  # seen retrying its refusals within RETRIED_STEPS quiet steps: a closed loop
    # What bounded it in the last step, if that step bounded it ("growth" or "refusals"): for the metrics.
    engaged: str | None = None
    _retried_in_step: bool = False  # let go by :meth:`retrying` in the step under way

    QUIET_STEPS = 4
    RETRY_SHARE = 4
    RETRY_FLOOR = 8  # completions presumed at a step's start, before any is counted
    RETRIED_STEPS = 8
    SLOW_STEPS = 8

    def step(self, step: Step, guard_retries: bool = True) -> bool:
        """Records ``step``; True while the flow is to be bounded (then at ``target_s`` times :attr:`rate`)."""
        rate = step.completed / step.elapsed_s
        self.rate = rate if self.rate == 0.0 else 0.5 * self.rate + 0.5 * rate
        self.slow_rate = (
            rate if self.slow_rate == 0.0 else self.slow_rate + (rate - self.slow_rate) / self.SLOW_STEPS
        )
        grows = self.backlog.record(step.held, step.completed)
        slow = step.completed > 0 and step.sojourn_s / step.completed > self.target_s
        self.refused_steps = self.refused_steps + 1 if step.refused else 0
        by_growth = self.by_growth and grows and slow and not self.retried
        flooded = by_growth or self.refused_steps >= self.burst_steps
        self.quiet_steps = 0 if flooded or step.refused else self.quiet_steps + 1
        retrying = guard_retries and (
            step.refused > self.RETRY_SHARE * step.completed or self._retried_in_step
        )
        self._retried_in_step = False
        held_on = self.bounded and self.quiet_steps < self.QUIET_STEPS
        self.retried = retrying or (self.retried and self.quiet_steps < self.RETRIED_STEPS)
        was_bounded, self.bounded = self.bounded, not retrying and (flooded or held_on)
        self.engaged = None if was_bounded or not self.bounded else ("growth" if by_growth else "refusals")
        if flooded:
            self.bound_rate = self.rate
        return self.bounded

    def retrying(self, refused: int, completed: int) -> bool:
        """Whether ``refused`` refusals against ``completed`` completions so far in a step are a retry loop (then
        the flow is let go at once, and remembered as retrying): the step's end is too late for a loop of light
        requests, refused thousands of times in a quarter second."""
        if not self.bounded or refused <= self.RETRY_SHARE * (completed + self.RETRY_FLOOR):
            return False
        self.bounded, self.retried, self._retried_in_step = False, True, True
        return True

    def bound(self, ceiling: int) -> int:
        """What completes within ``target_s`` at the rate of the flow's last flooded step, at least ``MIN_LIMIT``
        and never over ``ceiling`` (the configured bound, which wins where it is under ``MIN_LIMIT``). Quiet
        steps leave it where it was: their rate can fall for other reasons (measured: a bound that followed the
        falling rate through quiet steps, as a light flood gave way to a closed loop of heavier requests, fell to
        23 and refused the loop's 32 connections 2,683 times in a step)."""
        return min(ceiling, max(MIN_LIMIT, int(self.target_s * self.bound_rate)))

    @property
    def idle(self) -> bool:
        """Nothing to remember: not bounded, and not refused in the last step."""
        return not self.bounded and not self.refused_steps
