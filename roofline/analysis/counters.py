"""Counters against formulas: how far the bytes and FLOPs Nsight Compute measured sit from the analytic ones, and why.

Pure functions over a row that `profile --counters` filled (measure/counters.py measured it): the terminal
table, the HTML report and the tests read them.
"""

from __future__ import annotations

from roofline import fmt

GAP_RATIO = 1.5  # measured / analytic beyond ×1.5 (or below ÷1.5) is a gap worth a sentence


def pct_diff(analytic: float | None, measured: float | None) -> float | None:
    """(measured − analytic) / analytic in %, None when either is missing or analytic is 0."""
    if analytic is None or measured is None or not analytic:
        return None
    return 100.0 * (measured - analytic) / analytic


def explain_gap(row: object) -> str:
    """Why the counters differ from the formulas, in words the user can act on ('' when they agree).

    Rules, in order: DRAM bytes far above the minimum (several kernels → an intermediate goes through DRAM;
    one kernel → operands re-read); far below (L2 kept written lines, or inputs were still cached); executed
    FLOPs far above the useful ones (tensor ops: masked or repeated work; element-wise ops: more instructions
    per textbook operation); far below (SFU transcendentals, or tensor-core instructions the counters miss).
    """
    get = lambda name: getattr(row, name, None)  # noqa: E731
    sentences = []
    dram, min_bytes, kernels = get("measured_dram_bytes"), get("min_bytes"), get("measured_kernels") or 0
    if dram is not None and min_bytes:
        ratio = dram / min_bytes
        if ratio > GAP_RATIO and kernels > 1:
            sentences.append(f"DRAM traffic is {ratio:.1f}× the minimum over {kernels} kernels: intermediates "
                             "(e.g. an unfused chain's N×N scores) are written to DRAM and read back; a fused "
                             "variant keeps them on chip.")
        elif ratio > GAP_RATIO:
            sentences.append(f"DRAM traffic is {ratio:.1f}× the minimum in one kernel: operands are re-read "
                             "because tiles do not stay in L2 (poor reuse); larger tiles or a better-ordered grid "
                             "cut it.")
        elif ratio < 1 / GAP_RATIO:
            read, write = get("measured_dram_read_bytes"), get("measured_dram_write_bytes")
            if read is not None and write is not None and write < read / 4:
                why = (f"DRAM saw {fmt.nbytes(read)} read but only {fmt.nbytes(write)} written: the output still "
                       "sits dirty in L2 when the kernel ends and reaches DRAM later (L2 write-back)")
            else:
                why = "part of the data was served by L2 (inputs still cached, outputs not yet written back)"
            sentences.append(f"DRAM traffic is only {ratio:.2f}× the minimum: {why}; in a real block those bytes "
                             "move eventually, so the formula stays the op's cost.")
    flops, measured = get("flops"), get("measured_flops")
    if measured is not None and flops:
        ratio = measured / flops
        if ratio > GAP_RATIO and get("unit") == "tensor":
            sentences.append(f"The kernels execute {ratio:.1f}× the useful FLOPs: wasted work such as a causal "
                             "mask applied after computing the full N×N product, padding to tile sizes, or "
                             "recomputation.")
        elif ratio > GAP_RATIO:
            sentences.append(f"The kernels execute {ratio:.1f}× the formula's FLOPs: element-wise math takes more "
                             "instructions than its textbook count (exp, division and rsqrt expand into several); "
                             "it costs time only if the op is compute-bound.")
        elif ratio < 1 / GAP_RATIO:
            why = ("the tensor-core counters may not count this kernel's instructions (compare "
                   "sm__inst_executed_pipe_tensor_op_gmma in counters/ncu_raw.csv)" if get("unit") == "tensor"
                   else "exp, tanh and rsqrt run on the SFU, which ncu's FLOP counters leave out, and the formula "
                   "counts them")
            sentences.append(f"The counters see {ratio:.2f}× the formula's FLOPs: {why}.")
    return " ".join(sentences)
