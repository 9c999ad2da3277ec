"""Pipeline parallelism, measured: `profile --pp N` splits `layers` blocks into N stages of layers/N blocks, one stage
per rank (per TP × DP rank), and after the per-op rows measures the pipeline itself, on every rank at once:

1. correctness: microbatch 0 through the real pipeline (dropout off) equals the unsplit stack of layers, checked on
   the last stage against the reference computed there (and in train mode the input gradient on stage 0);
2. each stage alone: one microbatch's forward (train: and backward) through its layers (the model's input);
3. a real step: M microbatches through the N stages, timed from a barrier to the last rank's end (CollectiveTimer
   over the world). Train mode runs Megatron's 1F1B schedule ("PipeDream-Flush", Narayanan et al. 2021): stage s
   does N − s − 1 warm-up forwards, then alternates one forward and one backward, then the remaining backwards;
   prefill runs the forwards only. Activations go forward and gradients back point to point (comm.exchange: a
   send and the receive that follows it posted together, as Megatron's send_forward_recv_backward). Each stage
   adds up what it spent computing and in its sends/receives during the step.

A stage computes `split.block_forward` per layer: the catalog's attention chain, dropout at the block's p, and
under TP the all-reduces on the TP group, differentiable as Megatron's f and g. Weights and inputs come from seeds,
so every rank can build any layer (the reference) and TP ranks hold the same input. analysis/pipeline.py turns the
record (results.Pipeline) into the bubble, the time split and the model check.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from roofline.config import BlockConfig
from roofline.measure.ranks import CollectiveTimer
from roofline.measure.split import layer_weights, shard_weights, stack_forward, tp_sums, unsharded
from roofline.measure.timer import Timer
from roofline.ops.base import TOLERANCE, TORCH_DTYPES, relative_error
from roofline.ops.comm import axis, exchange
from roofline.results import DeviceInfo, Pipeline, Settings

Tensor = torch.Tensor


# --- a stage: its layers' weights and inputs ------------------------------------------------------------------

def microbatch(c: BlockConfig, k: int, seed: int, device: torch.device) -> Tensor:
    """Microbatch k's [batch, seq, d_model] input (or, with another seed, its output gradient)."""
    gen = torch.Generator(device=device).manual_seed(seed * 7919 + 100_000 + k)
    shape = (c.batch, c.q_len, c.d_model)
    return torch.randn(shape, generator=gen, device=device).to(TORCH_DTYPES[c.dtype])


@dataclass
class Stage:
    """This rank's stage: its layers' shards and its neighbours (global ranks; None at either end)."""

    c: BlockConfig  # the TP shard's config (c.pp stages, c.layers blocks)
    index: int
    weights: list[dict[str, Tensor]]
    before: int | None
    after: int | None
    tp_group: dist.ProcessGroup | None

    @property
    def first(self) -> bool:
        return self.before is None

    @property
    def last(self) -> bool:
        return self.after is None

    def forward(self, x: Tensor, dropout_p: float) -> Tensor:
        sums = tp_sums(self.tp_group) if self.c.tp > 1 else {}
        return stack_forward(x, self.weights, self.c, dropout_p=dropout_p, **sums)


def make_stage(c: BlockConfig, seed: int, device: torch.device) -> Stage:
    """This rank's stage of c (a TP shard): its position on the PP axis, its layers' TP shards of their weights."""
    pp, tp = axis("pp"), axis("tp")
    index, full, n = pp.position, unsharded(c), c.stage_layers
    weights = [shard_weights(layer_weights(full, layer, seed, device), full, c.tp, tp.position) if c.tp > 1 else
               layer_weights(full, layer, seed, device) for layer in range(index * n, (index + 1) * n)]
    if c.mode == "train":
        for w in weights:
            for t in w.values():
                t.requires_grad_(True)
    return Stage(c, index, weights, pp.neighbour(-1), pp.neighbour(+1), tp.group)


# --- the schedule ----------------------------------------------------------------------------------------------

@dataclass
class Tally:
    """Seconds one step spent computing and in point-to-point exchanges. GPU: CUDA events, read after the step."""

    cuda: bool
    spans: dict[str, list] = field(default_factory=lambda: {"compute": [], "p2p": []})

    @contextlib.contextmanager
    def span(self, kind: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.spans[kind].append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.spans[kind].append(time.perf_counter() - t0)

    def seconds(self, kind: str) -> float:
        if self.cuda:
            return sum(a.elapsed_time(b) for a, b in self.spans[kind]) / 1e3
        return sum(self.spans[kind])


def run_schedule(stage: Stage, m: int, source: Callable[[int], Tensor], sink: Callable[[int], Tensor],
                 tally: Tally, dropout_p: float) -> tuple[list[Tensor], list[Tensor]]:
    """One pipeline step of m microbatches on this rank's stage: 1F1B in train mode, forwards only otherwise.

    source(k) is microbatch k's input (stage 0), sink(k) its output gradient (last stage, train). Returns the
    outputs (last stage) and the input gradients (stage 0, train), in microbatch order.
    """
    c, train = stage.c, stage.c.mode == "train"
    shape, dtype, device = (c.batch, c.q_len, c.d_model), TORCH_DTYPES[c.dtype], stage.weights[0]["qkv"].device
    outputs: list[Tensor] = []
    input_grads: list[Tensor] = []
    kept: deque[tuple[Tensor, Tensor]] = deque()

    def swap(send: Tensor | None, peer_out: int | None, peer_in: int | None) -> Tensor:
        """Send `send` to peer_out and receive one tensor from peer_in, posted together."""
        got = torch.empty(shape, dtype=dtype, device=device) if peer_in is not None else None
        with tally.span("p2p"):
            exchange([(send, peer_out)] if send is not None else [], [(got, peer_in)] if got is not None else [])
        return got  # type: ignore[return-value]

    def forward(x: Tensor) -> Tensor:
        if train:
            x = x.detach().requires_grad_(True)
        with tally.span("compute"):
            y = stage.forward(x, dropout_p)
        if train:
            kept.append((x, y))
        if stage.last:
            outputs.append(y.detach())
        return y.detach()

    def backward(dy: Tensor) -> Tensor:
        x, y = kept.popleft()
        with tally.span("compute"):
            torch.autograd.backward(y, dy)
        if stage.first:
            input_grads.append(x.grad)  # type: ignore[arg-type]
        return x.grad  # type: ignore[return-value]

    def recv_forward(k: int) -> Tensor:
        return source(k) if stage.first else swap(None, None, stage.before)

    def send_forward(y: Tensor) -> None:
        if not stage.last:
            swap(y, stage.after, None)

    if not train:
        with torch.no_grad():
            for k in range(m):
                send_forward(forward(recv_forward(k)))
        return outputs, input_grads
    warm = min(c.pp - stage.index - 1, m)
    for k in range(warm):
        send_forward(forward(recv_forward(k)))
    x = recv_forward(warm) if warm < m else None
    for k in range(m - warm):  # steady state: forward of microbatch warm + k, backward of microbatch k
        y = forward(x)  # type: ignore[arg-type]
        dy = sink(k) if stage.last else swap(y, stage.after, stage.after)
        dx = backward(dy)
        if k == m - warm - 1:
            if not stage.first:
                swap(dx, stage.before, None)
        else:
            x = source(warm + k + 1) if stage.first else swap(dx, stage.before, stage.before)
    for k in range(m - warm, m):  # cool-down: the warm-up's backwards
        dx = backward(sink(k) if stage.last else swap(None, None, stage.after))
        if not stage.first:
            swap(dx, stage.before, None)
    return outputs, input_grads


# --- measuring ------------------------------------------------------------------------------------------------

def check(stage: Stage, seed: int, device: torch.device) -> float | None:
    """Microbatch 0 through the pipeline, dropout off, against the unsplit stack of all layers computed here: the
    output on the last stage, the input gradient on stage 0 (train). None on a stage that checks nothing."""
    c, full = stage.c, unsharded(stage.c)
    x, dy = microbatch(c, 0, seed, device), microbatch(c, 0, seed + 1, device)
    outputs, grads = run_schedule(stage, 1, lambda k: x, lambda k: dy, Tally(False), 0.0)
    if not outputs and not grads:
        return None
    layers = [layer_weights(full, layer, seed, device) for layer in range(c.layers)]
    ref_in = x.detach().clone().requires_grad_(bool(grads))
    with torch.set_grad_enabled(bool(grads)):
        ref = stack_forward(ref_in, layers, full)
    errors = [relative_error(outputs[0], ref.detach())] if outputs else []
    if grads:
        (ref_grad,) = torch.autograd.grad(ref, ref_in, dy)
        errors.append(relative_error(grads[0], ref_grad))
    return max(errors)


def _closures(stage: Stage, device: torch.device, seed: int) -> tuple[Callable[[], object], Callable[[], object],
                                                                       Callable[[], object]]:
    """(forward, setup, backward) of one microbatch through the stage alone: the backward is timed after an untimed
    forward (setup) that leaves its graph."""
    c, x, dy = stage.c, microbatch(stage.c, 0, seed, device), microbatch(stage.c, 0, seed + 1, device)
    p, pending = c.dropout_p, []

    def forward() -> object:
        if c.mode != "train":
            with torch.no_grad():
                return stage.forward(x, p)
        return stage.forward(x.detach().requires_grad_(True), p)

    def setup() -> None:
        pending.append(forward())

    def backward() -> None:
        torch.autograd.backward(pending.pop(), dy)

    return forward, setup, backward


def time_stage(stage: Stage, info: DeviceInfo, settings: Settings) -> tuple[float, float | None]:
    """(forward, backward) seconds of one microbatch through this stage alone, on its TP group's ranks together."""
    tp = axis("tp")
    timer = CollectiveTimer(info.torch_device, info.cache_bytes, tp.group) if tp.size > 1 else \
        Timer(info.torch_device, info.cache_bytes)
    forward, setup, backward = _closures(stage, info.torch_device, settings.seed)
    _, first = timer.first_call(forward)
    timer.warm_up(forward, first)
    fwd = timer.time(forward, settings.budget_s, settings.min_samples).median_s
    if stage.c.mode != "train":
        return fwd, None
    timer.warm_up(backward, 0.0, setup=setup)
    return fwd, timer.time(backward, settings.budget_s, settings.min_samples, setup=setup).median_s


def time_step(stage: Stage, info: DeviceInfo, settings: Settings) -> tuple[list[float], float, float]:
    """(step samples, compute seconds, p2p seconds) of the real schedule over c.microbatches, every rank of the
    world at once; the compute and p2p seconds are this rank's medians over the samples."""
    c, device, cuda = stage.c, info.torch_device, info.kind == "cuda"
    inputs = [microbatch(c, k, settings.seed, device) for k in range(c.microbatches)] if stage.first else []
    grads = [microbatch(c, k, settings.seed + 1, device) for k in range(c.microbatches)] if stage.last else []
    tallies: list[Tally] = []

    def step() -> None:
        torch.manual_seed(settings.seed)  # the TP ranks of a stage draw the same dropout masks
        tallies.append(Tally(cuda))
        run_schedule(stage, c.microbatches, inputs.__getitem__, grads.__getitem__, tallies[-1], c.dropout_p)

    timer = CollectiveTimer(device, info.cache_bytes)
    _, first = timer.first_call(step)
    timer.warm_up(step, first)
    tallies.clear()
    stats = timer.time(step, settings.budget_s, settings.min_samples, first_s=first)
    timer.sync()
    return (stats.samples_s, statistics.median(t.seconds("compute") for t in tallies),
            statistics.median(t.seconds("p2p") for t in tallies))


def measure_pipeline(c: BlockConfig, info: DeviceInfo, settings: Settings,
                     say: Callable[[str], None] = lambda m: None) -> Pipeline | None:
    """In every rank: check, time the stages alone, then the step; rank 0 gets the record (None elsewhere)."""
    device = info.torch_device
    stage = make_stage(c, settings.seed, device)
    error = check(stage, settings.seed, device)
    say(f"checked the pipeline's output against the unsplit {c.layers} layers; timing each stage alone")
    fwd, bwd = time_stage(stage, info, settings)
    say(f"timing the {'1F1B' if c.mode == 'train' else 'forward'} step of {c.microbatches} microbatches")
    samples, busy, p2p = time_step(stage, info, settings)
    mine = {"stage": stage.index, "forward": fwd, "backward": bwd, "busy": busy, "p2p": p2p, "error": error}
    gathered: list[dict] | None = [{}] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if gathered is None:
        return None
    return record(c, gathered, samples)


def record(c: BlockConfig, ranks: list[dict], samples: list[float]) -> Pipeline:
    """The Pipeline record from every rank's measurements: per stage the slowest rank's forward/backward (a step
    waits for it), the mean of its ranks' busy and p2p seconds; the checks' largest error."""
    by_stage = [[r for r in ranks if r["stage"] == s] for s in range(c.pp)]
    errors = [r["error"] for r in ranks if r["error"] is not None]
    mean = statistics.fmean
    return Pipeline(
        stages=c.pp, layers=c.layers, microbatches=c.microbatches,
        schedule="1F1B" if c.mode == "train" else "forward",
        forward_s=[max(r["forward"] for r in rs) for rs in by_stage],
        backward_s=[max(r["backward"] for r in rs) for rs in by_stage] if c.mode == "train" else [],
        step_s=statistics.median(samples), step_samples_s=list(samples),
        busy_s=[mean(r["busy"] for r in rs) for rs in by_stage], p2p_s=[mean(r["p2p"] for r in rs) for rs in by_stage],
        error=max(errors) if errors else None, tolerance=TOLERANCE[c.dtype])
