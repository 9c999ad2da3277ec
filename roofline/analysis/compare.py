"""Comparing runs (`roofline compare`): the same ops measured in two runs (two GPUs, two commits), with verdicts.

Rows are aligned by `Row.key` (op, variant, batch, seq_len, dtype, mode). A verdict never comes from two
medians alone but from both runs' raw samples (`Row.time_samples_s`):

    ratio = median(new) / median(base)                 (> 1: NEW is slower)
    p     = Mann-Whitney U rank test, two-sided, normal approximation with tie correction
    CI    = 95 % percentile bootstrap of the ratio of medians (2000 resamples, fixed seed)
    band  = [1/(1+t), 1+t] with t = --threshold (5 %): changes inside it do not matter

    SLOWER     p < 0.05, NEW ranks higher, and ratio > 1+t
    FASTER     p < 0.05, NEW ranks lower, and ratio < 1/(1+t)
    SAME       the whole CI lies inside the band: any change is smaller than t, with 95 % confidence
    AMBIGUOUS  anything else: < 3 samples, a significant change of uncertain size, or too noisy to tell
    UNMEASURED the row failed or was skipped in either run (left out of the geomean speedup)

Why three ingredients: the rank test says whether the run changed at all (robust to the slow outliers that
timings have), the threshold whether it changed by enough to matter, and only a confidence interval can
say SAME rather than "no evidence of change". The band is symmetric in log space, so swapping BASE and
NEW swaps SLOWER and FASTER. The bootstrap uses a fixed seed per row: the same files give the same verdicts.
With 3 samples a side only complete separation is significant (normal approximation p = 0.0495; the exact
test would say 0.10); GPU rows take at least 10 samples, so that edge concerns CPU runs only.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from roofline import fmt
from roofline.errors import RooflineError
from roofline.results import Results, Row, load

VERDICTS = ("SLOWER", "FASTER", "SAME", "AMBIGUOUS")
UNMEASURED = "UNMEASURED"  # not ok in both runs: nothing to compare
BOUNDS = ("compute", "memory")
MIN_SAMPLES = 3
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


def mann_whitney(base: list[float], new: list[float]) -> RankTest:
    """U = R_new − n_new(n_new+1)/2 with average ranks for ties; z = (U − n₁n₂/2) / σ, where
    σ² = n₁n₂/12 · ((N+1) − Σ(t³−t) / (N(N−1))) over tie groups of size t; p = erfc(|z|/√2), two-sided."""
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
    return RankTest(u, z, math.erfc(abs(z) / math.sqrt(2)))


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


def judge(base: list[float], new: list[float], threshold: float) -> Verdict:
    """The verdict for one row from both runs' raw samples (the rule is in the module docstring)."""
    ratio = statistics.median(new) / statistics.median(base) if base and new else None
    if min(len(base), len(new)) < MIN_SAMPLES or ratio is None:
        return Verdict("AMBIGUOUS", f"fewer than {MIN_SAMPLES} samples ({len(base)} vs {len(new)})", ratio)
    low, high = bootstrap_ratio_ci(base, new)
    test = mann_whitney(base, new)
    upper, lower = 1 + threshold, 1 / (1 + threshold)
    significant = test.p < ALPHA
    stats = f"p={test.p:.2g}, CI {low:.3f}–{high:.3f}×"

    def verdict(name: str, reason: str) -> Verdict:
        return Verdict(name, reason, ratio, (low, high), test.p)

    if significant and test.z > 0 and ratio > upper:
        return verdict("SLOWER", stats)
    if significant and test.z < 0 and ratio < lower:
        return verdict("FASTER", stats)
    if lower <= low and high <= upper:
        return verdict("SAME", stats)
    why = "CI crosses the threshold" if significant else "not significant"
    return verdict("AMBIGUOUS", f"{why}: {stats}")


@dataclass
class RowComparison:
    base: Row
    new: Row
    verdict: Verdict

    @property
    def ok(self) -> bool:
        return self.verdict.verdict != UNMEASURED

    @property
    def bound(self) -> str:
        return self.base.bound or self.new.bound


def compare_rows(base: Row, new: Row, threshold: float) -> RowComparison:
    if base.status != "ok" or new.status != "ok":
        sides = [f"{s.status} in {name}" + (f" ({s.note})" if s.note else "")
                 for name, s in (("base", base), ("new", new)) if s.status != "ok"]
        if (base.status, base.note) == (new.status, new.note):
            sides = [f"{base.status} in both" + (f" ({base.note})" if base.note else "")]
        return RowComparison(base, new, Verdict(UNMEASURED, "; ".join(sides)))
    return RowComparison(base, new, judge(base.time_samples_s, new.time_samples_s, threshold))


@dataclass
class Comparison:
    """NEW against BASE: aligned rows in BASE's order, and the rows only one of them has."""

    base_path: str
    new_path: str
    base: Results
    new: Results
    threshold: float
    rows: list[RowComparison] = field(default_factory=list)
    only_in_base: list[Row] = field(default_factory=list)
    only_in_new: list[Row] = field(default_factory=list)

    def counts(self, bound: str | None = None) -> dict[str, int]:
        picked = [r.verdict.verdict for r in self.rows if bound is None or r.bound == bound]
        return {v: picked.count(v) for v in (*VERDICTS, UNMEASURED)}

    def geomean_speedup(self, bound: str | None = None) -> float | None:
        """Geometric mean of base/new time over rows measured in both runs (> 1: NEW is faster)."""
        logs = [-math.log(r.verdict.ratio) for r in self.rows
                if r.ok and r.verdict.ratio and (bound is None or r.bound == bound)]
        return math.exp(sum(logs) / len(logs)) if logs else None

    @property
    def slower(self) -> list[RowComparison]:
        return [r for r in self.rows if r.verdict.verdict == "SLOWER"]


def device_name(results: Results) -> str:
    return results.run.device.name


def model_name(results: Results) -> str:
    return results.run.config.name


def align(base_path: str, new_path: str, base: Results, new: Results, threshold: float) -> Comparison:
    """Pair rows by Row.key (the first row wins should a file repeat a key); keep the unpaired ones."""
    base_rows, new_rows = _by_key(base.rows), _by_key(new.rows)
    c = Comparison(base_path, new_path, base, new, threshold)
    for key, row in base_rows.items():
        if key in new_rows:
            c.rows.append(compare_rows(row, new_rows[key], threshold))
        else:
            c.only_in_base.append(row)
    c.only_in_new = [r for k, r in new_rows.items() if k not in base_rows]
    return c


def _by_key(rows: list[Row]) -> dict[tuple, Row]:
    out: dict[tuple, Row] = {}
    for r in rows:
        out.setdefault(r.key, r)
    return out


def compare_files(paths: list[str], threshold: float) -> list[Comparison]:
    """Each later file against the first; one clear RooflineError for input that cannot be compared."""
    if len(paths) < 2:
        raise RooflineError("compare needs at least two results files: BASE NEW [MORE…]")
    runs = [load(p) for p in paths]
    traced = next((p for p, r in zip(paths, runs, strict=True) if r.run.trace is not None), None)
    if traced:
        raise RooflineError(f"{traced} is a `roofline trace`: compare reads `profile` runs (its rows are one per op "
                            "variant; a trace's, one per aten op call)")
    base = runs[0]
    comparisons = []
    for path, new in zip(paths[1:], runs[1:], strict=True):
        if model_name(new) != model_name(base):
            raise RooflineError(f"{path} profiles model '{model_name(new)}' but {paths[0]} profiles "
                                f"'{model_name(base)}': compare runs of the same model")
        c = align(paths[0], path, base, new, threshold)
        if not c.rows:
            raise RooflineError(f"{paths[0]} and {path} have no row in common (op, variant, batch, seq_len, "
                                "dtype and mode must match): compare runs of the same shape")
        comparisons.append(c)
    return comparisons


# ---- views shared by the terminal, markdown and HTML outputs ----

COLUMNS = ("op", "variant", "base time", "new time", "new/base", "verdict", "% roof base", "% roof new",
           "why")
TEXT_COLUMNS = ("op", "variant", "verdict", "why")  # left-aligned; the numbers are right-aligned
BOUND_COLUMNS = ("rows", "speedup (geomean)", *VERDICTS, UNMEASURED)


def title(c: Comparison) -> str:
    return f"{model_name(c.base)} · {device_name(c.base)} → {device_name(c.new)}"


def shape(row: Row) -> str:
    return f"b{row.batch} s{row.seq_len} {row.dtype} {row.mode}"


def row_label(row: Row) -> str:
    return f"{row.op} · {row.variant} ({shape(row)})"


def cells(r: RowComparison, show_shape: bool = False) -> list[str]:
    op = r.base.op + (f" ({shape(r.base)})" if show_shape else "")
    return [op, r.base.variant, fmt.seconds(r.base.time_median_s), fmt.seconds(r.new.time_median_s),
            fmt.ratio(r.verdict.ratio), r.verdict.verdict, fmt.pct(r.base.pct_of_roof),
            fmt.pct(r.new.pct_of_roof), r.verdict.reason]


def table_rows(c: Comparison) -> list[list[str]]:
    show_shape = len({r.base.key[2:] for r in c.rows}) > 1
    return [cells(r, show_shape) for r in c.rows]


def bound_rows(c: Comparison) -> list[tuple[str, list[str]]]:
    """(label, cells) for all rows, then per bound class of BASE (compute- vs memory-bound)."""
    out = []
    for label, bound in (("all", None), *((f"{b}-bound", b) for b in BOUNDS)):
        counts = c.counts(bound)
        n = sum(counts.values())
        if n:
            out.append((label, [str(n), fmt.ratio(c.geomean_speedup(bound)),
                                *(str(counts[v]) for v in (*VERDICTS, UNMEASURED))]))
    return out


def summary_line(c: Comparison) -> str:
    counts = c.counts()
    verdicts = " · ".join(f"{counts[v]} {v}" for v in VERDICTS)
    measured = sum(counts[v] for v in VERDICTS)
    return (f"{verdicts} · geomean speedup {fmt.ratio(c.geomean_speedup())} over {measured} rows measured in "
            f"both runs · threshold {100 * c.threshold:g} %")


def only_in_one(c: Comparison) -> list[str]:
    return ([f"only in base: {row_label(r)}" for r in c.only_in_base]
            + [f"only in new: {row_label(r)}" for r in c.only_in_new])


def sources(c: Comparison) -> list[str]:
    def one(name: str, path: str, res: Results) -> str:
        commit = res.run.git_commit[:10]
        return f"{name}: {path} ({device_name(res)}{', commit ' + commit if commit else ''})"

    return [one("base", c.base_path, c.base), one("new", c.new_path, c.new)]


def to_json(comparisons: list[Comparison]) -> dict[str, object]:
    def row(r: RowComparison) -> dict[str, object]:
        b, n, v = r.base, r.new, r.verdict
        return {"op": b.op, "variant": b.variant, "batch": b.batch, "seq_len": b.seq_len, "dtype": b.dtype,
                "mode": b.mode, "bound": r.bound, "verdict": v.verdict, "reason": v.reason, "ratio": v.ratio,
                "ci": list(v.ci) if v.ci else None, "p_value": v.p_value,
                **{f"{side}_{k}": getattr(s, k) for side, s in (("base", b), ("new", n)) for k in
                   ("status", "time_median_s", "samples", "flops_per_s", "bytes_per_s", "pct_of_roof")}}

    def key(r: Row) -> dict[str, object]:
        return dict(zip(("op", "variant", "batch", "seq_len", "dtype", "mode"), r.key, strict=True))

    return {"base": comparisons[0].base_path, "threshold": comparisons[0].threshold, "comparisons": [
        {"new": c.new_path, "model": model_name(c.base), "base_device": device_name(c.base),
         "new_device": device_name(c.new), "counts": c.counts(),
         "geomean_speedup": {b or "all": c.geomean_speedup(b) for b in (None, *BOUNDS)},
         "rows": [row(r) for r in c.rows], "only_in_base": [key(r) for r in c.only_in_base],
         "only_in_new": [key(r) for r in c.only_in_new]} for c in comparisons]}
