"""The one run pipeline: roofs → run record → measure each (op, variant) → save after every row → finish.

`profile`, `sweep`, every rank of `profile --tp/--dp` and the counters pass all go through a Session, so a run's
record (device, clocks, config, roofs, settings, the catalog's fusion groups) is written one way, and results are
saved atomically after every row: an interrupted run keeps everything it measured.

A Session talks to its user through a Listener (the CLI's shows a progress bar; tests pass none), never by
printing: measuring never renders.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from roofline.analysis.placement import CPU_ROOF_ERROR, ROOF_ERROR, Roofs, place_row, raise_to_reached, suspect_cause
from roofline.config import BlockConfig
from roofline.errors import RooflineError
from roofline.measure import ceilings
from roofline.measure.device import read_clocks
from roofline.measure.timer import Timer
from roofline.measure.variant import measure, retime
from roofline.ops import Op, Variant, fusion_groups, gemm_shapes
from roofline.ops.moe import moe_flops
from roofline.results import Ceilings, DeviceInfo, Peaks, Results, Row, Run, Settings, save


@dataclass
class Listener:
    """How a run tells its user what happens: messages, and each variant as it starts and ends."""

    info: Callable[[str], None] = lambda message: None
    warn: Callable[[str], None] = lambda message: None
    start: Callable[[Op, Variant], None] = lambda op, variant: None
    row: Callable[[Row], None] = lambda row: None
    another_round: Callable[[Row, int], None] = lambda row, round_number: None


def settings_for(info: DeviceInfo, budget_s: float | None = None, seed: int = 0, rounds: int = 1) -> Settings:
    """How hard to measure on this device: a budget per variant and round (timing stops earlier once the median
    is stable), and the rounds (`--rounds`, the CI mode: each op timed again, interleaved with the others).
    A CPU's default budget is 0.3 s: its roofs are known to 25 % (CPU_ROOF_ERROR), and 0.3 s of samples puts the
    median of its element-wise ops within a fraction of a percent (30–90 samples at seq 1024)."""
    if budget_s is not None and not budget_s > 0:
        raise RooflineError(f"--budget must be a positive number of seconds, got {budget_s}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise RooflineError(f"--rounds must be a positive integer, got {rounds!r}")
    if info.kind == "cuda":
        return Settings(budget_s=budget_s or 0.5, min_samples=10, seed=seed, rounds=rounds)
    return Settings(budget_s=budget_s or 0.3, min_samples=3, seed=seed, rounds=rounds)


def load_roofs(info: DeviceInfo, calibrate: bool = False, listener: Listener | None = None,
               config: BlockConfig | None = None) -> tuple[Roofs, Ceilings | None]:
    """The roofs to place rows against, and the measured ceilings if any.

    Measured roofs come from `roofline calibrate`'s cache; `calibrate` measures them first. The CPU has no
    datasheet, so its roofs are always measured: quickly, the run's dtype and its block's GEMM shapes only
    (`config`), bounded to ~30 s, then cached.
    """
    say = listener or Listener()
    measured = None
    if calibrate or info.kind == "cpu":
        dtypes = (config.dtype,) if config is not None and config.dtype != "fp8" else ()
        shapes = gemm_shapes(config) if config is not None and info.kind == "cpu" else ()
        if ceilings.load_cached(info) is None or calibrate:
            say.info(f"Calibrating {info.name} (first run on this device; bounded, ~30 s on a CPU)")
        measured, cached = ceilings.get_ceilings(info, force=calibrate, quick=not calibrate, warn=say.warn,
                                                 dtypes=dtypes, shapes=shapes,
                                                 say=lambda m: say.info(f"  calibrating: {m}"))
        say.info(f"{'Using cached' if cached else 'Measured'} roofs of {info.name}")
    else:
        measured = ceilings.load_cached(info, say.warn)
        say.info(f"Using measured roofs of {info.name} cached by `roofline calibrate`" if measured
                 else "Using datasheet roofs (run `roofline calibrate` once for measured ones)")
    roofs = Roofs(info.peak_flops, info.memory_bandwidth, measured.peak_flops if measured else {},
                  measured.memory_bandwidth if measured else 0.0,
                  error=CPU_ROOF_ERROR if info.kind == "cpu" else ROOF_ERROR)
    return roofs, measured


def git_commit() -> str:
    """The commit of the roofline checkout that ran, with '-dirty' when it had local changes.

    ROOFLINE_GIT_COMMIT overrides it, for copies of a checkout that travel without their .git folder.
    """
    if os.environ.get("ROOFLINE_GIT_COMMIT"):
        return os.environ["ROOFLINE_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{sha}-dirty" if sha and dirty else sha
    except (OSError, subprocess.SubprocessError):
        return ""


def run_record(c: BlockConfig, info: DeviceInfo, roofs: Roofs, settings: Settings, argv: list[str],
               measured: Ceilings | None) -> Run:
    """The run's record: everything needed to read and render its rows again, without the catalog."""
    from roofline import __version__

    peaks = Peaks(roofs.datasheet_flops, roofs.datasheet_bandwidth, info.datasheet_source or info.peaks_source,
                  measured)
    return Run(roofline_version=__version__, git_commit=git_commit(), command=" ".join(["roofline", *argv]),
               started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), python=sys.version.split()[0], device=info,
               clocks_at_start=read_clocks(info), config=c, settings=settings, peaks=peaks,
               fusion_groups=fusion_groups(c), warnings=list(info.warnings), moe=moe_flops(c))


@dataclass
class Session:
    """One run in progress: its results (saved after every row), where they go and what they are placed against."""

    info: DeviceInfo
    roofs: Roofs
    results: Results
    out_dir: Path
    listener: Listener = field(default_factory=Listener)
    started: float = field(default_factory=time.perf_counter)

    @property
    def settings(self) -> Settings:
        return self.results.run.settings

    def add(self, rows: list[Row]) -> None:
        """Keep rows and save the results at once (atomically)."""
        self.results.rows += rows
        save(self.results, self.out_dir)

    def measure(self, items: list[tuple[Op, Variant]], c: BlockConfig) -> None:
        """Measure every planned variant in order, saving after each; the listener hears of each one. With
        settings.rounds > 1 every variant measured ok is timed again, round after round, in block order: the ops
        of a round are interleaved, so a slow stretch of the device (a power cap that comes and goes, other work)
        moves one round of every op a little rather than one op a lot, and the rounds' spread shows it."""
        timer = Timer(self.info.torch_device, self.info.cache_bytes, self.info.max_sm_clock_mhz or 0)
        previous_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = c.dtype == "tf32"
        measured = []
        try:
            for index, (op, variant) in enumerate(items):
                self.listener.start(op, variant)
                row = measure(op, variant, c, self.info, self.roofs, timer, self.settings, index)
                self.add([row])
                self.listener.row(row)
                measured.append((index, op, variant, row))
            for round_number in range(2, self.settings.rounds + 1):
                for index, op, variant, row in measured:
                    if row.status == "ok":
                        self.listener.start(op, variant)
                        retime(row, op, variant, c, self.info, self.roofs, timer, self.settings, index)
                        save(self.results, self.out_dir)
                    self.listener.another_round(row, round_number)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous_tf32

    def finish(self) -> Results:
        """Record the wall time and save for the last time. A measured roof that a row of this run beat is not a
        ceiling: beyond the roof's error it is dropped from the cache (the next run measures it again); within it,
        it is raised to the rate the row reached, here and in the cache (`raise_to_reached`). The run says which."""
        self.results.run.wall_s = time.perf_counter() - self.started
        save(self.results, self.out_dir)
        measured = self.results.run.peaks.measured
        beaten = [r for r in self.results.ok_rows() if suspect_cause(r, self.roofs.error)[0] == "roof"
                  and "measured" in r.ceiling_source]
        if beaten and measured is not None:
            ceilings.forget(self.info)
            self.listener.warn(f"{', '.join(f'{r.op} · {r.variant}' for r in beaten)} beat the measured roof they were "
                               "placed against: it is no ceiling, so the cache of this device's roofs is dropped "
                               "(`roofline calibrate` measures them again)")
        elif measured is not None and (raised := raise_to_reached(self.results.ok_rows(), self.roofs)):
            for row in self.results.ok_rows():
                if row.ceiling and row.time_median_s and row.pct_of_roof is not None:
                    place_row(row, self.roofs, row.ceiling)
            measured.peak_flops = dict(self.roofs.measured_flops)
            measured.memory_bandwidth = self.roofs.measured_bandwidth
            measured.raised = [*measured.raised, *raised]
            ceilings.save(measured, ceilings.cache_path(self.info))
            self.listener.info(f"This run beat measured roofs within their {100 * self.roofs.error:.0f} % error; "
                               f"raised to what it reached, here and in the cache: {'; '.join(raised)}")
            save(self.results, self.out_dir)
        return self.results


def start(info: DeviceInfo, config: BlockConfig, out_dir: Path, argv: list[str], settings: Settings,
          calibrate: bool = False, listener: Listener | None = None, roofs: tuple[Roofs, Ceilings | None] | None = None,
          started: float | None = None) -> Session:
    """Open a run: its roofs (given, cached, or calibrated now), its record, a warning if others use the GPU."""
    listener = listener or Listener()
    found_roofs, measured = roofs or load_roofs(info, calibrate, listener, config)
    run = run_record(config, info, found_roofs, settings, argv, measured)
    others = run.clocks_at_start.other_processes
    if others:
        listener.warn(f"{others} other process(es) are using {info.name}: timings may be disturbed")
        run.warnings.append(f"{others} other process(es) used the GPU at start")
    return Session(info, dataclasses.replace(found_roofs), Results(run=run), out_dir, listener,
                   started if started is not None else time.perf_counter())
