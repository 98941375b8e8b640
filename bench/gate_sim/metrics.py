"""Metrics over seeds (mean and 95 % CI) and the limits of ../shared/notes/gating.md §7.2-7.3."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from bench.gate_sim.sim import Scenario, SimResult

# two-sided 95 % Student t quantiles by degrees of freedom (normal beyond the table)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def entropy(p: float) -> float:
    """Binary entropy H(p) in bits."""
    if p <= 0 or p >= 1:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def z_capacity(f: float) -> float:
    """Capacity of the Z-channel of a BVT that fails clean content with probability f (bits/run)."""
    if f <= 0:
        return 1.0
    return math.log2(1 + (1 - f) * f ** (f / (1 - f)))


def runs_limit(p: float, f: float) -> float:
    """L4: runs per commit >= H(p)/C_Z(f)."""
    return entropy(p) / z_capacity(f)


def throughput_limit(sc: Scenario, p: float) -> float:
    """L5: lambda_max^info = k C_Z(f) / (T_mean H(p)), commits per hour."""
    h = entropy(p)
    return math.inf if h == 0 else sc.pools * z_capacity(sc.flake_rate) / (sc.mean_bvt_hours * h)


def latency_limit(sc: Scenario) -> float:
    """L6: clean-commit latency floor T(1 + 1/(2k)), hours."""
    return sc.mean_bvt_hours * (1 + 1 / (2 * sc.pools))


def ceil_log(n: int, base: int) -> int:
    """⌈log_base n⌉ for n >= 1, exact on powers."""
    r, x = 0, 1
    while x < n:
        x *= base
        r += 1
    return r


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y on x (latency hours per hour of arrival time; nan if < 2 points)."""
    if len(points) < 2:
        return math.nan
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else math.nan


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % confidence interval (nan values ignored)."""
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    if len(v) == 1:
        return v[0], 0.0
    t = _T95.get(len(v) - 1, 1.96)
    return statistics.fmean(v), t * statistics.stdev(v) / math.sqrt(len(v))


def per_seed(r: SimResult, sc: Scenario) -> dict[str, float]:
    """The per-seed numbers that are averaged (hours; rates as fractions)."""
    promoted = max(r.promoted, 1)
    first = [lat for a, lat in sorted(r.latency_by_arrival)[: len(r.latency_by_arrival) // 2]]
    second = [lat for a, lat in sorted(r.latency_by_arrival)[len(r.latency_by_arrival) // 2 :]]
    return {
        "runs_per_commit": r.runs / max(r.n_commits, 1),
        "runs_per_promoted": r.runs / promoted,
        "pool_hours_per_promoted": r.pool_hours / promoted,
        "pool_hours_per_commit": r.pool_hours / max(r.n_commits, 1),
        "latency_median": quantile(r.latencies, 0.5),
        "latency_p95": quantile(r.latencies, 0.95),
        "latency_max": max(r.latencies, default=math.nan),
        "ttc_median": quantile(r.ttc, 0.5),
        "ttc_p95": quantile(r.ttc, 0.95),
        "ttc_batch": statistics.fmean(r.ttc_batch) if r.ttc_batch else math.nan,
        "master_breakage": float(r.master_breakage),
        "illegal_promotions": float(r.illegal_promotions),
        "false_rejection_rate": r.false_rejections / max(r.innocent, 1),
        "missed_culprits": float(r.culprits_missed),
        "human_fixes": float(r.human_fixes),
        "unpromoted": float(r.unpromoted),
        "p95_second_over_first": quantile(second, 0.95) / max(quantile(first, 0.95), 1e-9),
        "latency_slope": slope(r.latency_by_arrival),
        "median_second_over_first": quantile(second, 0.5) / max(quantile(first, 0.5), 1e-9),
        "utilisation": r.pool_hours / max(sc.pools * r.end_time, 1e-9),
    }


@dataclass
class Summary:
    """One policy in one scenario, over seeds: ``stats[name] = (mean, ci95)``."""

    policy: str
    seeds: int
    stats: dict[str, tuple[float, float]]
    errors: list[str]
    ratios: dict[str, float]

    def to_json(self) -> dict:
        return asdict(self)


def summarise(policy: str, results: list[SimResult], sc: Scenario, p: float) -> Summary:
    rows = [per_seed(r, sc) for r in results]
    stats = {k: mean_ci([row[k] for row in rows]) for k in rows[0]} if rows else {}
    errors = [f"seed {r.seed}: {r.error}" for r in results if r.error]
    errors += [f"seed {r.seed}: {v}" for r in results for v in r.violations[:3]]
    ratios = {}
    if stats:
        t = sc.mean_bvt_hours
        ratios["E_cost"] = runs_limit(p, sc.flake_rate) / max(stats["runs_per_commit"][0], 1e-9)
        ratios["E_lat"] = (
            latency_limit(sc) / stats["latency_median"][0] if stats["latency_median"][0] else math.nan
        )
        n = stats["ttc_batch"][0]
        ttc = stats["ttc_median"][0]
        if not math.isnan(n) and ttc and ttc > 0:
            ratios["E_ttc"] = max(ceil_log(round(n), sc.pools + 1), 1) * t / ttc
        else:
            ratios["E_ttc"] = math.nan
    return Summary(policy, len(results), stats, errors, ratios)


SLOPE_BOUND = 0.05  # latency trend (h per h of arrivals) of a bounded backlog
P95_BOUND_HOURS = 24.0  # ... and a p95 latency a gate must keep to be called keeping up
UNPROMOTED_BOUND = 0.01


def sustainable(rate_results: dict[float, dict[str, float]]) -> float:
    """lambda*: the largest swept rate up to which every rate kept up.

    Keeping up (means over seeds): the backlog does not grow, i.e. the least-squares trend of
    latency against arrival time is <= ``SLOPE_BOUND`` hours per hour (by Little's law the
    backlog grows with it); the p95 latency stays <= ``P95_BOUND_HOURS`` (linear staging
    bounds every policy's backlog by itself: a blame merges the queue behind the culprit
    into one span tested at once, so a bounded backlog alone says little); and no more than
    1 % of the commits are left unpromoted at the end.
    """
    best = 0.0
    for rate in sorted(rate_results):
        m = rate_results[rate]
        ok = (
            m["latency_slope"] <= SLOPE_BOUND
            and m["latency_p95"] <= P95_BOUND_HOURS
            and m["unpromoted_frac"] <= UNPROMOTED_BOUND
        )
        if not ok:
            break
        best = rate
    return best


__all__ = [
    "Summary",
    "entropy",
    "latency_limit",
    "mean_ci",
    "quantile",
    "runs_limit",
    "summarise",
    "sustainable",
    "throughput_limit",
    "z_capacity",
]
