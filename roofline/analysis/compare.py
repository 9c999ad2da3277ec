"""Comparing runs (`roofline compare`): the same ops measured in two runs (two GPUs, two commits), with verdicts.

Rows are aligned by `Row.key` (op, variant, batch, seq_len, kv_len, dtype, mode), and only runs of the same work
are compared: runs whose blocks differ in anything else that changes the work (tensor or data parallelism, the
causal mask, heads, widths, experts…) are refused with what differs. Each row's verdict comes from verdict.py:
from the rounds of a CI-mode run (`profile --rounds N`), never from two medians alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from roofline import fmt
from roofline.analysis.verdict import UNMEASURED, VERDICTS, Verdict, judge_rows
from roofline.errors import RooflineError
from roofline.results import Results, Row, load

BOUNDS = ("compute", "memory")
# BlockConfig fields that change an op's work beyond the row key: runs that differ in one are not compared.
WORK_FIELDS = ("d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "activation", "norm", "dropout_p", "causal",
               "n_experts", "top_k", "tp", "dp", "kv_cache_len")


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


def compare_rows(base: Row, new: Row, threshold: float, metric: str = "time") -> RowComparison:
    if base.status != "ok" or new.status != "ok":
        sides = [f"{s.status} in {name}" + (f" ({s.note})" if s.note else "")
                 for name, s in (("base", base), ("new", new)) if s.status != "ok"]
        if (base.status, base.note) == (new.status, new.note):
            sides = [f"{base.status} in both" + (f" ({base.note})" if base.note else "")]
        return RowComparison(base, new, Verdict(UNMEASURED, "; ".join(sides)))
    return RowComparison(base, new, judge_rows(base, new, threshold, metric))


@dataclass
class Comparison:
    """NEW against BASE: aligned rows in BASE's order, and the rows only one of them has."""

    base_path: str
    new_path: str
    base: Results
    new: Results
    threshold: float
    metric: str = "time"  # "time", or "roof": % of each run's own roof
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
        """The rows a regression gate fails on: SLOWER from rounds (verdict.Verdict.gates)."""
        return [r for r in self.rows if r.verdict.gates]


def device_name(results: Results) -> str:
    return results.run.device.name


def model_name(results: Results) -> str:
    return results.run.config.name


def align(base_path: str, new_path: str, base: Results, new: Results, threshold: float,
          metric: str = "time") -> Comparison:
    """Pair rows by Row.key (the first row wins should a file repeat a key); keep the unpaired ones."""
    base_rows, new_rows = _by_key(base.rows), _by_key(new.rows)
    c = Comparison(base_path, new_path, base, new, threshold, metric)
    for key, row in base_rows.items():
        if key in new_rows:
            c.rows.append(compare_rows(row, new_rows[key], threshold, metric))
        else:
            c.only_in_base.append(row)
    c.only_in_new = [r for k, r in new_rows.items() if k not in base_rows]
    return c


def _by_key(rows: list[Row]) -> dict[tuple, Row]:
    out: dict[tuple, Row] = {}
    for r in rows:
        out.setdefault(r.key, r)
    return out


def different_work(base: Results, new: Results) -> list[str]:
    """What differs between two runs' blocks beyond the row key ('tp 1 vs 4', 'causal False vs True')."""
    a, b = base.run.config, new.run.config
    return [f"{name} {getattr(a, name)} vs {getattr(b, name)}" for name in WORK_FIELDS
            if getattr(a, name) != getattr(b, name)]


def compare_files(paths: list[str], threshold: float, metric: str = "time") -> list[Comparison]:
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
        if differ := different_work(base, new):
            raise RooflineError(f"{paths[0]} and {path} profile different work ({', '.join(differ)}): compare runs "
                                "of the same block")
        c = align(paths[0], path, base, new, threshold, metric)
        if not c.rows:
            raise RooflineError(f"{paths[0]} and {path} have no row in common (op, variant, batch, seq_len, "
                                "kv_len, dtype and mode must match): compare runs of the same shape")
        comparisons.append(c)
    return comparisons


# ---- views shared by the terminal, markdown and HTML outputs ----

COLUMNS = ("op", "variant", "base time", "new time", "speedup", "verdict", "noise", "% roof base", "% roof new",
           "why")
TEXT_COLUMNS = ("op", "variant", "verdict", "why")  # left-aligned; the numbers are right-aligned
BOUND_COLUMNS = ("rows", "speedup (geomean)", *VERDICTS, UNMEASURED)


def title(c: Comparison) -> str:
    return f"{model_name(c.base)} · {device_name(c.base)} → {device_name(c.new)}"


def shape(row: Row) -> str:
    return f"b{row.batch} " + (f"kv{row.kv_len}" if row.mode == "decode" else f"s{row.seq_len}") + \
        f" {row.dtype} {row.mode}"


def row_label(row: Row) -> str:
    return f"{row.op} · {row.variant} ({shape(row)})"


def cells(r: RowComparison, show_shape: bool = False) -> list[str]:
    """One row of the table: times, speedup (base/new, as the summary's geomean), verdict, the op's noise floor
    (the run-to-run spread its rounds showed), % of each run's roof, and why."""
    op = r.base.op + (f" ({shape(r.base)})" if show_shape else "")
    v = r.verdict
    return [op, r.base.variant, fmt.seconds(r.base.time_median_s), fmt.seconds(r.new.time_median_s),
            fmt.ratio(1 / v.ratio if v.ratio else None), v.verdict,
            "–" if v.noise is None else f"{100 * v.noise:.1f} %", fmt.pct(r.base.pct_of_roof),
            fmt.pct(r.new.pct_of_roof), v.reason]


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
    judged = ("rounds" if any(r.verdict.rounds for r in c.rows) else
              "one round: no row can gate" if measured else "no row measured in both runs")
    metric = " · % of roof" if c.metric == "roof" else ""
    return (f"{verdicts} · geomean speedup {fmt.ratio(c.geomean_speedup())} over {measured} rows measured in "
            f"both runs · threshold {100 * c.threshold:g} % · {judged}{metric}")


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
        return {"op": b.op, "variant": b.variant, "batch": b.batch, "seq_len": b.seq_len, "kv_len": b.kv_len,
                "dtype": b.dtype, "mode": b.mode, "bound": r.bound, "verdict": v.verdict, "gates": v.gates,
                "reason": v.reason, "ratio": v.ratio, "ci": list(v.ci) if v.ci else None, "p_value": v.p_value,
                "noise": v.noise, "clock_ratio": v.clock_ratio, "rounds": v.rounds,
                **{f"{side}_{k}": getattr(s, k) for side, s in (("base", b), ("new", n)) for k in
                   ("status", "time_median_s", "samples", "rounds", "round_medians_s", "sm_clock_mhz",
                    "flops_per_s", "bytes_per_s", "pct_of_roof", "suspect")}}

    def key(r: Row) -> dict[str, object]:
        return dict(zip(("op", "variant", "batch", "seq_len", "kv_len", "dtype", "mode"), r.key, strict=True))

    return {"base": comparisons[0].base_path, "threshold": comparisons[0].threshold,
            "metric": comparisons[0].metric, "comparisons": [
        {"new": c.new_path, "model": model_name(c.base), "base_device": device_name(c.base),
         "new_device": device_name(c.new), "counts": c.counts(),
         "geomean_speedup": {b or "all": c.geomean_speedup(b) for b in (None, *BOUNDS)},
         "rows": [row(r) for r in c.rows], "only_in_base": [key(r) for r in c.only_in_base],
         "only_in_new": [key(r) for r in c.only_in_new]} for c in comparisons]}
