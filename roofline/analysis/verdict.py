"""The verdict on one op measured in two runs: SLOWER, FASTER, SAME or AMBIGUOUS, from evidence that holds.

Samples taken inside one run are not independent of the run: a GPU that hits its power cap for a stretch, memory
or L2 state, other work on the host move whole runs by 5–15 %, so hundreds of samples of one run say nothing about
the next. A verdict therefore compares ROUNDS (`profile --rounds N`, the CI mode): each op timed N times,
interleaved with the other ops over the whole run, one median per round.

    ratio  = median(new rounds) / median(base rounds)      (> 1: NEW is slower)
    noise  = the run-to-run spread the rounds show: max over both runs of max(round)/min(round) − 1
    band   = [1/(1+f), 1+f] with f = max(--threshold, noise): a change inside it does not matter or cannot be told
             from noise
    p      = Mann-Whitney U of the two runs' round medians, exact (5 rounds a side: complete separation gives
             p = 2/252 ≈ 0.008; 3 rounds can never reach p < 0.05)
    CI     = 95 % percentile bootstrap of the ratio of medians of the rounds
    clock  = base's sustained SM clock / new's (NVML, sampled while the rounds ran)

    SLOWER          p < 0.05, NEW ranks higher, ratio > 1+f, and still > 1+f once the clock ratio is divided out
    SLOWER (clock)  the same, but the clock explains it (ratio / clock ≤ 1+f): the GPU ran slower, not the code
    FASTER(/clock)  the same the other way
    SAME            the whole CI lies inside the band
    AMBIGUOUS       anything else

Runs of one round (the default `profile`) have no run-to-run spread to show: their rows are judged on the pooled
samples as before (the reason says "one round") and `compare --fail-on slower` does not gate on them.
The band is symmetric in log space, so swapping BASE and NEW swaps SLOWER and FASTER; the bootstrap uses a fixed
seed: the same files give the same verdicts.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from roofline.results import Row

SLOWER, FASTER, SAME, AMBIGUOUS = "SLOWER", "FASTER", "SAME", "AMBIGUOUS"
SLOWER_CLOCK, FASTER_CLOCK = "SLOWER (clock)", "FASTER (clock)"
VERDICTS = (SLOWER, SLOWER_CLOCK, FASTER, FASTER_CLOCK, SAME, AMBIGUOUS)
UNMEASURED = "UNMEASURED"  # not ok in both runs: nothing to compare
MIN_SAMPLES = 3
MIN_ROUNDS = 3
ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class RankTest:
    """Mann-Whitney U of NEW against BASE. u counts the (base, new) pairs where new is slower (ties ½)."""

    u: float
    z: float
    p: float


EXACT_UP_TO = 25  # samples a side up to which the p-value is exact (no ties): the normal one is wrong at 3 or 5


def mann_whitney(base: list[float], new: list[float]) -> RankTest:
    """U = R_new − n_new(n_new+1)/2 with average ranks for ties; z = (U − n₁n₂/2) / σ, where
    σ² = n₁n₂/12 · ((N+1) − Σ(t³−t) / (N(N−1))) over tie groups of size t. p, two-sided: exact (U's distribution
    over all orderings) for small samples without ties — 3 rounds a side can never give p < 0.05 (p = 0.1 at
    complete separation, where the normal approximation says 0.0495) — else erfc(|z|/√2)."""
    n1, n2 = len(base), len(new)
    values = sorted([(v, 0) for v in base] + [(v, 1) for v in new])
    rank_sum_new, tie_term, i = 0.0, 0.0, 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1][0] == values[i][0]:
            j += 1
        rank = (i + j) / 2 + 1  # the average of ranks i+1 … j+1
        rank_sum_new += rank * sum(side for _, side in values[i:j + 1])
        tie_term += (j - i + 1) ** 3 - (j - i + 1)
        i = j + 1
    n = n1 + n2
    u = rank_sum_new - n2 * (n2 + 1) / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return RankTest(u, 0.0, 1.0)
    z = (u - n1 * n2 / 2) / math.sqrt(variance)
    if tie_term == 0 and max(n1, n2) <= EXACT_UP_TO:
        return RankTest(u, z, exact_p(n1, n2, round(u)))
    return RankTest(u, z, math.erfc(abs(z) / math.sqrt(2)))


def exact_p(n_base: int, n_new: int, u: int) -> float:
    """Two-sided p of U = u: the share of the C(n₁+n₂, n₂) equally likely orderings with a U as extreme.
    counts[b][k] = orderings of b base and `new` values with U = k; the largest value is either a new one (above
    every base value: U grows by b) or a base one (U unchanged)."""
    counts = [[1]] * (n_base + 1)  # no new values yet: U = 0, one ordering
    for new in range(1, n_new + 1):
        row = [[1]]  # no base values: one ordering, U = 0
        for b in range(1, n_base + 1):
            width = b * new + 1
            cell = [0] * width
            for k, c in enumerate(row[b - 1]):  # the largest is a base value
                cell[k] += c
            for k, c in enumerate(counts[b]):  # the largest is a new value
                cell[k + b] += c
            row.append(cell)
        counts = row
    dist = counts[n_base]
    total = sum(dist)
    below, above = sum(dist[:u + 1]), sum(dist[u:])
    return min(1.0, 2 * min(below, above) / total)


def bootstrap_ratio_ci(base: list[float], new: list[float], confidence: float = CONFIDENCE,
                       n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of median(new)/median(base): each run resampled with replacement, apart."""
    rng = np.random.default_rng(seed)

    def medians(samples: list[float]) -> np.ndarray:
        values = np.asarray(samples, dtype=float)
        return np.median(rng.choice(values, size=(n_resamples, values.size)), axis=1)

    ratios = medians(new) / medians(base)
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Verdict:
    verdict: str  # one of VERDICTS, or UNMEASURED
    reason: str
    ratio: float | None = None  # median(new) / median(base)
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    noise: float | None = None  # the run-to-run spread the rounds showed (0.03: 3 %); None with one round
    clock_ratio: float | None = None  # base's sustained SM clock / new's
    rounds: bool = False  # judged on rounds (a verdict a CI gate may act on)

    @property
    def gates(self) -> bool:
        """A verdict a regression gate may fail on: SLOWER, from rounds (not one round, not the clock)."""
        return self.verdict == SLOWER and self.rounds


def spread(values: list[float]) -> float:
    """max / min − 1 of a run's round medians: how far rounds of the same code moved."""
    return max(values) / min(values) - 1 if values and min(values) > 0 else math.inf


def judge(base: list[float], new: list[float], threshold: float, clock: float | None = None,
          rounds: bool = False) -> Verdict:
    """The verdict from two lists of times: round medians (`rounds`, the band widened to their spread) or one
    round's pooled samples; `clock` divides the clock out of the ratio (module docstring)."""
    ratio = statistics.median(new) / statistics.median(base) if base and new else None
    least = MIN_ROUNDS if rounds else MIN_SAMPLES
    if min(len(base), len(new)) < least or ratio is None:
        what = "rounds" if rounds else "samples"
        return Verdict(AMBIGUOUS, f"fewer than {least} {what} ({len(base)} vs {len(new)})", ratio, rounds=rounds)
    noise = max(spread(base), spread(new)) if rounds else None
    floor = max(threshold, noise or 0.0)
    low, high = bootstrap_ratio_ci(base, new)
    test = mann_whitney(base, new)
    upper, lower = 1 + floor, 1 / (1 + floor)
    significant = test.p < ALPHA
    stats = (f"p={test.p:.2g}, CI {low:.3f}–{high:.3f}×" + (f", noise {100 * noise:.1f} %" if rounds else "")
             + ("" if rounds else ", one round"))

    def verdict(name: str, reason: str) -> Verdict:
        return Verdict(name, reason, ratio, (low, high), test.p, noise, clock, rounds)

    unclocked = ratio / clock if clock else ratio
    if significant and test.z > 0 and ratio > upper:
        explained = unclocked <= upper
        return verdict(SLOWER_CLOCK if explained else SLOWER,
                       stats + (f", clock {clock:.3f}× explains it" if explained else ""))
    if significant and test.z < 0 and ratio < lower:
        explained = unclocked >= lower
        return verdict(FASTER_CLOCK if explained else FASTER,
                       stats + (f", clock {clock:.3f}× explains it" if explained else ""))
    if lower <= low and high <= upper:
        return verdict(SAME, stats)
    why = "CI crosses the threshold" if significant else "not significant"
    return verdict(AMBIGUOUS, f"{why}: {stats}")


def clock_ratio(base: Row, new: Row) -> float | None:
    """base's sustained SM clock / new's, for a compute-bound row (a memory-bound op's time does not follow the
    SM clock); None when either is unknown."""
    if base.bound != "compute" or not base.sm_clock_mhz or not new.sm_clock_mhz:
        return None
    return base.sm_clock_mhz / new.sm_clock_mhz


def roof_scale(base: Row, new: Row) -> float:
    """`--metric roof`: new's times × this compare % of each run's own roof (the roof NEW was placed against
    over BASE's): pct_base / pct_new = t_new·A_new / (t_base·A_base) for attainable rates A."""
    a_base, a_new = base.attainable_flops_per_s, new.attainable_flops_per_s
    if a_base and a_new and base.flops and new.flops:
        return a_new / a_base
    if base.peak_bytes_per_s and new.peak_bytes_per_s:
        return new.peak_bytes_per_s / base.peak_bytes_per_s
    return 1.0


def judge_rows(base: Row, new: Row, threshold: float, metric: str = "time") -> Verdict:
    """The verdict on one op of two runs: on their rounds when both have MIN_ROUNDS, on pooled samples otherwise;
    `metric` "roof" compares % of each run's roof instead of time (comparable across GPUs and drivers)."""
    scale = roof_scale(base, new) if metric == "roof" else 1.0
    clock = None if metric == "roof" else clock_ratio(base, new)
    if min(len(base.round_medians_s), len(new.round_medians_s)) >= MIN_ROUNDS:
        return judge(base.round_medians_s, [t * scale for t in new.round_medians_s], threshold, clock, rounds=True)
    return judge(base.time_samples_s, [t * scale for t in new.time_samples_s], threshold, clock)
