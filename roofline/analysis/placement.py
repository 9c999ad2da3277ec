"""The roofline maths, in one place, and the placement of a measured row under the roofs that apply to it.

intensity  = FLOPs / min_bytes                       (FLOP per byte of compulsory DRAM traffic)
attainable = min(peak FLOP/s of the op's unit, intensity × memory bandwidth)
ridge      = peak / bandwidth: ops left of it are memory-bound, right of it compute-bound
% of roof  = achieved FLOP/s / attainable FLOP/s  (for a memory-bound op: achieved bytes/s / bandwidth)
"""

from __future__ import annotations

from dataclasses import dataclass

from roofline import fmt
from roofline.results import Row

COMM_ROOF = "comm.busbw"  # a TP collective's roof: the interconnect's bus bandwidth (NCCL-tests convention)
DP_ROOF = "comm.busbw.dp"  # the gradients' all-reduce: the bus bandwidth across the DP group
P2P_ROOF = "comm.p2p"  # a pipeline's send/recv: point-to-point bandwidth between neighbouring stages
ROOF_ERROR = 0.05  # how well a roof is known: a row above its roof by more than this is suspect, not a result
NO_WORK_PCT = 300.0  # this far above its roof, the timed call cannot have done the op's work
# A shared CPU's speed drifts over minutes (the 2-core EPYC VM: a 512³ fp32 GEMM at 125 GFLOP/s during calibration,
# 95–119 a few minutes later, the block's own GEMMs at up to 147 in between): its roofs are known to about 25 %.
CPU_ROOF_ERROR = 0.25


def ceiling_key(unit: str, dtype: str) -> str:
    """Which roof applies: tensor cores at the op's dtype, fp32 CUDA cores, or the interconnect for a collective.

    An fp32 matmul without TF32 runs on CUDA cores (FFMA), so it meets the vector roof; element-wise ops
    compute in fp32 whatever their storage dtype. A collective ("comm") is bound by the bus bandwidth between
    the ranks, its reduction adds by the CUDA cores (Roofs maps both).
    """
    if unit == "comm":
        return COMM_ROOF
    if unit == "tensor" and dtype != "fp32":
        return f"tensor.{dtype}"
    return "vector.fp32"


def intensity(flops: float, min_bytes: float) -> float:
    return flops / min_bytes if min_bytes > 0 else float("inf")


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    return peak_flops / bandwidth


def attainable_flops(op_intensity: float, peak_flops: float, bandwidth: float) -> float:
    return min(peak_flops, op_intensity * bandwidth)


def bound(op_intensity: float, peak_flops: float, bandwidth: float) -> str:
    return "compute" if op_intensity >= ridge_point(peak_flops, bandwidth) else "memory"


@dataclass(frozen=True)
class RooflinePoint:
    """Where one measured op sits against the roof that applies to it."""

    intensity: float
    achieved_flops: float
    achieved_bytes: float
    attainable_flops: float
    bound: str
    pct_of_roof: float
    floor_s: float  # the time the roof allows: max(FLOPs / peak, bytes / bandwidth)


def place(flops: float, min_bytes: float, time_s: float, peak_flops: float, bandwidth: float) -> RooflinePoint:
    ai = intensity(flops, min_bytes)
    attain = attainable_flops(ai, peak_flops, bandwidth)
    achieved = flops / time_s
    return RooflinePoint(
        intensity=ai, achieved_flops=achieved, achieved_bytes=min_bytes / time_s, attainable_flops=attain,
        bound=bound(ai, peak_flops, bandwidth),
        pct_of_roof=100.0 * (achieved / attain if attain != 0 else min_bytes / time_s / bandwidth),  # 0 FLOPs: bytes
        floor_s=max(flops / peak_flops, min_bytes / bandwidth),
    )


@dataclass
class Roofs:
    """The roofs rows are placed against: measured where calibrated, datasheet otherwise."""

    datasheet_flops: dict[str, float]
    datasheet_bandwidth: float
    measured_flops: dict[str, float]
    measured_bandwidth: float
    interconnect_bandwidth: float = 0.0  # `profile --tp`: all-reduce bus bandwidth across the TP group (comm.busbw)
    interconnect_source: str = ""
    dp_bandwidth: float = 0.0  # `profile --dp`: all-reduce bus bandwidth across the DP group (comm.busbw.dp)
    dp_source: str = ""
    p2p_bandwidth: float = 0.0  # `profile --pp`: send/recv bandwidth between neighbouring stages (comm.p2p)
    p2p_source: str = ""
    error: float = ROOF_ERROR  # how well these roofs are known (CPU_ROOF_ERROR on a CPU): above it, a row is suspect

    def peak(self, key: str) -> tuple[float, str]:
        if key.startswith("comm."):  # a collective's reduction adds run on the CUDA cores
            key = "vector.fp32"
        for flops, source in ((self.measured_flops, "measured"), (self.datasheet_flops, "datasheet")):
            if key in flops:
                return flops[key], source
        fallback = self.measured_flops or self.datasheet_flops
        best = max(fallback.values()) if fallback else float("nan")
        return best, "nearest"

    def bandwidth(self, key: str = "") -> tuple[float, str]:
        links = {COMM_ROOF: (self.interconnect_bandwidth, self.interconnect_source),
                 DP_ROOF: (self.dp_bandwidth, self.dp_source), P2P_ROOF: (self.p2p_bandwidth, self.p2p_source)}
        if key in links:
            bandwidth, source = links[key]
            return bandwidth or float("nan"), source or "none"
        if self.measured_bandwidth:
            return self.measured_bandwidth, "measured"
        return self.datasheet_bandwidth, "datasheet"


def suspect_cause(row: Row, error: float = ROOF_ERROR) -> tuple[str, str]:
    """Why a row above its roof cannot be a result: ("", "") for a row within its roof (or its roof's error).

    Three causes, in the order the evidence points: the timed call did almost no work (far above the roof: a
    variant that returns its input, work the timer does not see); the formula counts more FLOPs or bytes than
    the op does (well above); the roof is not a ceiling for this op (just above: a calibration that missed the op's
    best shape). A number above its roof is a bug until one of them is fixed.
    """
    pct = row.pct_of_roof
    if row.status != "ok" or pct is None or pct <= 100 * (1 + error):
        return "", ""
    if pct > NO_WORK_PCT:
        return "no work", (f"{pct:.0f} % of its roof in {fmt.seconds(row.time_median_s)}: the timed call did almost "
                           "no work (a variant that returns its input, or work the timer does not see)")
    if pct > 100 * (1 + max(5 * ROOF_ERROR, 2 * error)):
        what = "FLOPs" if row.bound == "compute" else "bytes"
        return "formula", f"{pct:.0f} % of its roof: the formula counts more {what} than the op does"
    return "roof", (f"{pct:.0f} % of its roof: the {row.ceiling_source} roof is not a ceiling for this op (a "
                    "calibration that missed its shape: `roofline calibrate --force`)")


def raise_to_reached(rows: list[Row], roofs: Roofs) -> list[str]:
    """Raise each measured roof that a row beat by less than the roof's error to the rate the row reached, and say
    which (one sentence each). A roof is the best rate seen on the device; a row within that error above it is the
    better measurement (the 2-core VM's speed drifts 20-30 % from one second to the next, so a calibration can
    meet a slow moment), while a row beyond the error is a bug until explained (`suspect_cause`), never a roof.
    The caller places the rows again under the raised roofs."""
    best: dict[str, tuple[float, Row]] = {}  # roof ('memory' or a FLOP roof's key) -> the best rate above it
    for row in rows:
        above = row.status == "ok" and row.pct_of_roof is not None and row.pct_of_roof > 100
        if not above or suspect_cause(row, roofs.error)[0]:
            continue
        if row.bound == "compute" and row.ceiling in roofs.measured_flops and row.flops_per_s:
            key, rate = row.ceiling, row.flops_per_s
        elif row.bound == "memory" and roofs.measured_bandwidth and row.bytes_per_s and not row.ceiling.startswith(
                "comm."):
            key, rate = "memory", row.bytes_per_s
        else:
            continue
        if key not in best or rate > best[key][0]:
            best[key] = (rate, row)
    said = []
    for key, (rate, row) in best.items():
        if key == "memory":
            said.append(f"memory {fmt.bandwidth(roofs.measured_bandwidth)} → {fmt.bandwidth(rate)}")
            roofs.measured_bandwidth = rate
        else:
            said.append(f"{key} {fmt.flops_rate(roofs.measured_flops[key])} → {fmt.flops_rate(rate)}")
            roofs.measured_flops[key] = rate
        said[-1] += f" ({row.op} · {row.variant}, {row.pct_of_roof:.0f} % of the calibrated roof)"
    return said


def place_row(row: Row, roofs: Roofs, key: str = "") -> None:
    """Fill the roofline columns of a timed row under the roof `key` (default: its unit's at its dtype), and say
    why it is suspect if it sits above that roof."""
    row.ceiling = key or ceiling_key(row.unit, row.dtype)
    peak, source = roofs.peak(row.ceiling)
    bandwidth, bw_source = roofs.bandwidth(row.ceiling)
    row.ceiling_source = source if source == bw_source else f"{source} compute, {bw_source} memory"
    point = place(row.flops, row.min_bytes, row.time_median_s or float("nan"), peak, bandwidth)
    row.peak_flops_per_s, row.peak_bytes_per_s = peak, bandwidth
    row.flops_per_s, row.bytes_per_s = point.achieved_flops, point.achieved_bytes
    row.attainable_flops_per_s, row.bound = point.attainable_flops, point.bound
    row.pct_of_roof, row.floor_s = point.pct_of_roof, point.floor_s
    row.suspect = suspect_cause(row, roofs.error)[1]
