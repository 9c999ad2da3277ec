"""Human units for tables, plots and reports: one place so every output reads the same."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from roofline.results import Results, Row, Run


def _scaled(value: float | None, units: list[tuple[float, str]], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    value = float(f"{value:.{digits}g}")  # round first: 999.96e12 reads '1 P', not '1e+03 T'
    for scale, suffix in units:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {suffix}".rstrip()
    scale, suffix = units[-1]
    return f"{value / scale:.{digits}g} {suffix}".rstrip()


def flops(value: float | None) -> str:
    return _scaled(value, [(1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP"),
                           (1, "FLOP")])


def flops_rate(value: float | None) -> str:
    return _scaled(value, [(1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s"), (1e3, "kFLOP/s"), (1, "FLOP/s")])


def nbytes(value: float | None) -> str:
    return _scaled(value, [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B")])


def capacity(value: float | None) -> str:
    """A memory's size in binary units, as vendors' '80GB' means 80 GiB-ish: '79.6 GiB', '50 MiB'."""
    return _scaled(value, [(2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "B")])


def bandwidth(value: float | None) -> str:
    return _scaled(value, [(1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1, "B/s")])


def seconds(value: float | None) -> str:
    """'1.02 ms', '16.3 s'; from 100 s on, minutes: '21 min 30 s'."""
    if value is not None and math.isfinite(value) and value >= 99.5:
        minutes, rest = divmod(round(value), 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    return _scaled(value, [(1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")])


def intensity(value: float | None) -> str:
    """FLOP per byte: 3 significant digits, whole numbers from 1000 up ('2234', not '2.23e+03')."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.0f}" if abs(value) >= 999.5 else f"{value:.3g}"


def pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.0f} %"


def signed_pct(value: float | None) -> str:
    """'+12 %', '-3 %': a difference in percent, its sign always shown."""
    return "–" if value is None else f"{value:+.0f} %"


def ratio(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}×"


def si(value: float | None, unit: str = "") -> str:
    """Compact SI form for dense tables: 1.10 T, 269 M (unit appended, e.g. 'B')."""
    return _scaled(value, [(1e15, "P" + unit), (1e12, "T" + unit), (1e9, "G" + unit), (1e6, "M" + unit),
                           (1e3, "k" + unit), (1, unit)])


def run_fields(results: Results) -> list[str]:
    """The run in a few words, most general first: model, mode, batch, shape, dtype, device."""
    c, trace = results.run.config, results.run.trace
    shape = f"seq {c.seq_len}" if c.mode != "decode" else f"kv {c.kv_len}"
    if trace is not None and trace.kind != "hf":  # a user's module: its shapes are its inputs'
        return [c.name, c.mode, c.dtype, results.run.device.name]
    if trace is not None:
        layers = f"{trace.layers} layers" if trace.layers > 1 else "1 layer"
        return [c.name, trace.attn_impl, layers, c.mode, f"batch {c.batch}", shape, c.dtype, results.run.device.name]
    parallel = [f"{name.upper()}={getattr(c, name)}" for name in ("tp", "dp", "pp") if getattr(c, name, 1) > 1]
    return [c.name, c.mode, *parallel, f"batch {c.batch}", shape, c.dtype, results.run.device.name]


def describe_run(results: Results) -> str:
    """'gpt-7b · prefill · batch 1 · seq 8192 · bf16 · NVIDIA H100 SXM': the run in one line (table, plots, report)."""
    return " · ".join(run_fields(results))


def moe_line(run: Run) -> str | None:
    """'FLOPs per token: MoE X vs dense-equivalent Y …' for a mixture-of-experts run (None for a dense one)."""
    if run.moe is None:
        return None
    c, per_token, dense = run.config, run.moe.flops_per_token, run.moe.dense_flops_per_token
    return (f"FLOPs per token: MoE {flops(per_token)} vs dense-equivalent {flops(dense)} "
            f"({dense / per_token:.1f}×; top {c.top_k} of {c.n_experts} experts; dense = one "
            f"FFN of {c.n_experts}×{c.ffn_dim})")


CLOCK_NOTE_BELOW = 0.97  # a compute-bound row whose sustained SM clock fell below this share of the max says so
UNSTABLE_REL_ERR = 0.02  # a median still this uncertain when the budget ran out is flagged


def clock_ratio(r: Row, max_sm_clock_mhz: int | None) -> float | None:
    """The SM clock the row's samples sustained, as a share of the GPU's max (None when unknown)."""
    return r.sm_clock_mhz / max_sm_clock_mhz if r.sm_clock_mhz and max_sm_clock_mhz else None


def unstable(r: Row) -> str:
    """'±8.1 % after 3 samples' for a row whose timing budget ran out before its median settled ('' if it did)."""
    if (r.stop_reason == "budget" and r.rel_err is not None and r.rel_err > UNSTABLE_REL_ERR
            and math.isfinite(r.rel_err)):
        return f"±{100 * r.rel_err:.1f} % after {r.samples} samples"
    return ""


def ok_row_note(r: Row, max_sm_clock_mhz: int | None = None) -> str:
    """What a measured row's note column says: why it is suspect, its note, the SM clock it ran at where that
    matters (a compute-bound row below 97 % of the max clock: a power or thermal cap), a median that never settled,
    and whether launching it costs the host more than the GPU takes to run it (host-bound: an eager loop pays the
    launch time, not the GPU time)."""
    parts = [f"SUSPECT: {r.suspect}"] if r.suspect else []
    parts += [r.note] if r.note else []
    ratio = clock_ratio(r, max_sm_clock_mhz)
    if ratio is not None and ratio < CLOCK_NOTE_BELOW and r.bound == "compute":
        parts.append(f"clock {r.sm_clock_mhz} MHz = {100 * ratio:.0f} % of max" + (f" ({r.throttle})" if r.throttle
                                                                                    else ""))
    if unstable(r):
        parts.append(f"UNSTABLE: {unstable(r)}")
    elif r.samples == 2 and r.time_median_s:  # a call of several budgets: two samples, their spread is all there is
        parts.append(f"2 samples of {seconds(r.time_median_s)}")
    if r.host_time_s and r.time_median_s and r.host_time_s > r.time_median_s:
        parts.append(f"host-bound: launch {seconds(r.host_time_s)}")
    return "; ".join(parts)
