"""A pipeline's maths (no torch): the bubble in theory, the step the tool's model predicts from stage times and
transfers, and where a measured step's time went. Reads a `profile --pp N` run (results.Pipeline), never measures.

Theory (GPipe, Huang et al. 2019; 1F1B, Narayanan et al. 2021): N equal stages, M microbatches, free transfers —
each stage idles through the fill and the drain, bubble = (N − 1)/(M + N − 1) of the step, for GPipe's schedule and
1F1B alike (1F1B keeps fewer activations alive, not less idle time).

Model: `simulate` plays the schedule the ranks ran (measure/pipeline.run_schedule: forwards only in prefill, 1F1B in
train) as dependent tasks — F(s, m) after F(s − 1, m) and one transfer, B(s, m) after B(s + 1, m) and one transfer
(the last stage's after its own F) — each stage running its tasks in its order, one at a time; the step ends with
the last task. With equal stages f, b and transfer t, forwards only take (M + N − 1)f + (N − 1)t; 1F1B without
transfer time (M + N − 1)(f + b), and with it at least 2(N − 1)t more: a stage holds at most N − s microbatches
in flight, so in the steady state the round trip of an activation and its gradient can stall it too. The model is
fed twice: the stages' own times (measured alone), and the op profile (one block's ops at their baseline variants,
the unfused block, × layers per stage: what a single-device profile predicts); each prediction is compared with the
measured step.

Where the step went, per stage and then averaged over the stages: busy (its compute in the step, split into
compute-bound, memory-bound and communication — its TP all-reduces — as its ops' rows split), communication
(the time in its sends and receives, up to what its transfers take one after another at the measured p2p speed),
and the bubble: the rest, time the stage waited for its neighbours. The measured bubble is that rest's share of the
step, to compare with the theory.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from roofline import fmt
from roofline.analysis.block import KIND_NAMES, block_before, kind_split
from roofline.analysis.fusion import unfused_block
from roofline.results import Results, Row

PIPELINE_GROUP = "pipeline"  # the stage boundary's send/recv: once per stage and microbatch, not part of a block
OUTSIDE_STEP = ("allreduce_grads",)  # DP's gradient all-reduce runs after the pipeline's flush, not in its step
STEP_KINDS = ("compute", "memory", "comm", "bubble")


def theory_bubble(stages: int, microbatches: int) -> float:
    """(N − 1)/(M + N − 1): the share of a step each of N equal stages idles, with M microbatches."""
    return (stages - 1) / (microbatches + stages - 1)


def schedule(stage: int, stages: int, microbatches: int, train: bool) -> list[tuple[str, int]]:
    """Stage `stage`'s tasks in the order it runs them: ("F", m) and ("B", m). Forwards only, or Megatron's 1F1B:
    N − s − 1 warm-up forwards, then one forward and one backward, then the remaining backwards."""
    if not train:
        return [("F", m) for m in range(microbatches)]
    warm = min(stages - stage - 1, microbatches)
    order = [("F", m) for m in range(warm)]
    for k in range(microbatches - warm):
        order += [("F", warm + k), ("B", k)]
    return order + [("B", m) for m in range(microbatches - warm, microbatches)]


@dataclass(frozen=True)
class Simulated:
    step_s: float
    busy_s: list[float]  # per stage: its tasks' summed time

    @property
    def bubble(self) -> float:
        return 1 - statistics.fmean(self.busy_s) / self.step_s if self.step_s else float("nan")


def simulate(forward_s: list[float], backward_s: list[float] | None, transfer_s: float,
             microbatches: int) -> Simulated:
    """The step time of the schedule (forwards only when backward_s is None or empty, else 1F1B) with per-stage
    forward/backward times of one microbatch and one transfer time per stage boundary."""
    n, train = len(forward_s), bool(backward_s)
    orders = [schedule(s, n, microbatches, train) for s in range(n)]
    ends: dict[tuple[str, int, int], float] = {}
    free, nxt = [0.0] * n, [0] * n
    while any(nxt[s] < len(orders[s]) for s in range(n)):
        progressed = False
        for s in range(n):
            if nxt[s] == len(orders[s]):
                continue
            kind, m = orders[s][nxt[s]]
            need = (("F", s - 1, m) if s > 0 else None) if kind == "F" else \
                (("B", s + 1, m) if s < n - 1 else ("F", s, m))
            if need is not None and need not in ends:
                continue
            ready = 0.0 if need is None else ends[need] + (transfer_s if need[1] != s else 0.0)
            start = max(free[s], ready)
            ends[(kind, s, m)] = free[s] = start + (forward_s[s] if kind == "F" else backward_s[s])  # type: ignore
            nxt[s] += 1
            progressed = True
        if not progressed:
            raise ValueError("the schedule deadlocks")  # a bug in `schedule`, never the user's input
    busy = [sum(forward_s[s] if k == "F" else backward_s[s] for k, _ in orders[s]) for s in range(n)]  # type: ignore
    return Simulated(max(free), busy)


def step_rows(res: Results) -> list[Row]:
    """The rows a pipeline stage's step runs per layer: the unfused block, bar the stage boundary and DP's
    gradient all-reduce (each op at its baseline variant, its slowest rank)."""
    return [r for r in unfused_block(res) if r.group != PIPELINE_GROUP and r.op not in OUTSIDE_STEP]


def profile_stage(res: Results, stage_layers: int, train: bool) -> tuple[float, float]:
    """(forward, backward) of one microbatch through one stage from a profile's op rows: each op's time × per block
    × layers per stage. Train rows time forward + backward, with the backward alone beside it; a collective (no
    backward alone) counts half each way, as its row is the forward's and the backward's all-reduce."""
    forward = backward = 0.0
    for r in step_rows(res):
        t = (r.time_median_s or 0.0) * r.per_block
        back = 0.0 if not train else ((r.backward_time_s or 0.0) * r.per_block if r.unit != "comm" else t / 2)
        forward, backward = forward + t - back, backward + back
    return forward * stage_layers, backward * stage_layers


def transfers(stage: int, stages: int, microbatches: int, train: bool) -> int:
    """Tensors the stage sends or receives in one step: each microbatch's activation in from the previous stage
    and out to the next, and in train mode its gradient back the other way."""
    inner = (stage > 0) + (stage < stages - 1)
    return microbatches * inner * (2 if train else 1)


@dataclass(frozen=True)
class PipelineSummary:
    """A measured pipeline step beside the theory and the model (seconds; fractions in 0..1)."""

    stages: int
    layers: int
    microbatches: int
    schedule: str
    step_s: float
    split: dict[str, float]  # STEP_KINDS → seconds of the step (an average stage)
    bubble: float  # measured
    theory: float  # (N − 1)/(M + N − 1)
    model_bubble: float  # the model's (from the stage times)
    from_stages_s: float | None  # the model's step from the stages' measured times and the transfer
    from_profile_s: float | None  # … from the op profile (this run's rows, or a single-device run's)
    profile_source: str
    error: float | None  # the pipeline's output vs the unsplit layers
    tolerance: float | None
    note: str = ""

    def model_error(self, predicted: float | None) -> float | None:
        """(predicted − measured) / measured."""
        return None if predicted is None or not self.step_s else predicted / self.step_s - 1


def summarize(res: Results, profile: Results | None = None) -> PipelineSummary | None:
    """The summary of a `profile --pp N` run (None for any other run). `profile`: a single-device run of the same
    block to predict the step from (default: this run's own op rows, one stage's ranks)."""
    p = res.run.parallel.pipeline if res.run.parallel else None
    if p is None or not p.step_s or not p.forward_s:
        return None
    train, n, m = p.schedule == "1F1B", p.stages, p.microbatches
    t = p.transfer_s or 0.0
    rows = step_rows(res)
    shares = kind_split([o for o in block_before(res) if o.op in {r.op for r in rows}])
    busy_total = sum(shares.values()) or 1.0
    per_stage = []
    for s in range(n):
        busy, comm = p.busy_s[s], min(p.p2p_s[s], transfers(s, n, m, train) * t)
        part = {kind: busy * shares[kind] / busy_total for kind in ("compute", "memory", "comm")}
        part["comm"] += comm
        part["bubble"] = max(0.0, p.step_s - busy - comm)
        per_stage.append(part)
    split = {kind: statistics.fmean(part[kind] for part in per_stage) for kind in STEP_KINDS}
    model = simulate(p.forward_s, p.backward_s, t, m)
    source = profile or res
    f, b = profile_stage(source, p.layers // n, train)
    from_profile = simulate([f] * n, [b] * n if train else None, t, m).step_s if f else None
    return PipelineSummary(n, p.layers, m, p.schedule, p.step_s, split, split["bubble"] / p.step_s,
                           theory_bubble(n, m), model.bubble, model.step_s, from_profile,
                           "this run's op rows" if profile is None else fmt.describe_run(profile), p.error,
                           p.tolerance, p.note)


def split_text(split: dict[str, float]) -> str:
    total = sum(split.values()) or float("nan")
    return ", ".join(f"{100 * seconds / total:.0f} % {KIND_NAMES.get(kind, kind)}" for kind, seconds in split.items())


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def pipeline_lines(s: PipelineSummary) -> list[str]:
    """The terminal's and the report's sentences about a pipeline step."""
    per = f"{s.layers // s.stages} of {s.layers} layers per stage"
    lines = [f"PP={s.stages} {s.schedule} step, {s.microbatches} microbatches, {per}: {fmt.seconds(s.step_s)} measured"
             f" — {split_text(s.split)} (an average stage)",
             f"Bubble {fmt.pct(100 * s.bubble)} measured vs {fmt.pct(100 * s.theory)} in theory "
             f"((N−1)/(M+N−1)), {fmt.pct(100 * s.model_bubble)} in the model"]
    model = [f"{fmt.seconds(s.from_stages_s)} from the stages' times and sends "
             f"({fmt.signed_pct(_pct(s.model_error(s.from_stages_s)))})"]
    if s.from_profile_s:
        model.append(f"{fmt.seconds(s.from_profile_s)} from the op profile, {s.profile_source} "
                     f"({fmt.signed_pct(_pct(s.model_error(s.from_profile_s)))})")
    lines.append("Model: " + "; ".join(model))
    if s.error is not None:
        ok = s.tolerance is None or s.error <= s.tolerance
        lines.append(f"Pipeline output vs the unsplit {s.layers} layers: relative error {s.error:.1e}"
                     + ("" if ok else f" — above the tolerance {s.tolerance:.0e}"))
    if s.note:
        lines.append(f"Note: {s.note}")
    return lines
