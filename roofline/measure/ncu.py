"""Nsight Compute (`ncu`) as a tool: find it, profile a command under it, read its raw CSV page.

Knows nothing about ops: counters.py says which metrics to collect and how kernels map back to ops. What this
module handles is ncu's behaviour:
- a metric name this ncu or GPU does not know either fails the whole run ("Failed to find metric …"; the
  run is retried without it) or is silently left out of the report (ncu 2025.3 on H100 does this for
  sm__ops_path_tensor_src_fp16_*): both kinds are reported as dropped;
- reading counters may need permission (ERR_NVGPUCTRPERM): one clear message, no retry;
- clocks: `--clock-control none` always — counters count bytes and instructions, which do not depend on the
  clock, and locking clocks needs a permission most machines do not give (ncu's default then aborts);
- the report is exported with `--print-units base`, so bytes are bytes; the parser still reads scaled units.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class NcuProblem(Exception):
    """ncu is missing, may not read the counters, or profiled nothing: the message says what to do."""


TOOLKIT_NCU = "/usr/local/cuda/bin/ncu"


def find(ncu_path: str | None) -> str:
    """The ncu executable: --ncu PATH, else `ncu` on PATH, else the CUDA toolkit's."""
    candidates = [ncu_path] if ncu_path else [shutil.which("ncu"), TOOLKIT_NCU]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    if ncu_path:
        raise NcuProblem(f"no ncu at {ncu_path} (--ncu must point at the Nsight Compute CLI)")
    raise NcuProblem("Nsight Compute's `ncu` is not on PATH (install Nsight Compute, or pass --ncu PATH)")


def command(ncu: str, metrics: list[str], app: list[str], report: Path, nvtx_include: str | None) -> list[str]:
    """Profile `app`'s kernels (only those inside NVTX ranges matching nvtx_include, when given) into `report`."""
    nvtx = ["--nvtx", "--nvtx-include", nvtx_include] if nvtx_include else ["--nvtx"]
    return [ncu, "--clock-control", "none", "--target-processes", "all", *nvtx, "--metrics", ",".join(metrics),
            "--export", str(report), "--force-overwrite", *app]


_REJECTION_WORDS = ("find", "unknown", "invalid", "not found", "not available", "not supported", "does not exist")


def rejected_metrics(log: str, metrics: list[str]) -> list[str]:
    """Those of `metrics` that an ncu error or warning line names as unknown (the wording varies by version)."""
    lines = [ln for ln in log.splitlines() if ln.startswith(("==ERROR==", "==WARNING=="))
             and any(w in ln.lower() for w in _REJECTION_WORDS)]
    named = lambda name, line: re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", line)  # noqa: E731
    return [m for m in metrics if any(named(m, ln) or named(m.split(".")[0], ln) for ln in lines)]


def permission_problem(log: str) -> str | None:
    if "ERR_NVGPUCTRPERM" in log or "permission to access NVIDIA GPU Performance Counters" in log:
        return ("ncu may not read this GPU's performance counters (ERR_NVGPUCTRPERM): run as root, or have an "
                "administrator set NVreg_RestrictProfilingToAdminUsers=0 for the nvidia driver")
    return None


@dataclass
class NcuRun:
    csv_text: str  # the raw page
    log: str  # ncu's and the application's output, merged
    metrics: list[str]  # the metrics collected
    dropped_metrics: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def _run_logged(cmd: list[str], log_path: Path, on_line: Callable[[str], None]) -> tuple[int, str]:
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          errors="replace") as proc, log_path.open("a") as log:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            lines.append(line)
            on_line(line.rstrip("\n"))
    return proc.returncode, "".join(lines)


def profile(ncu: str, metrics: list[str], app: list[str], work_dir: Path, nvtx_include: str | None = None,
            on_line: Callable[[str], None] = lambda s: None) -> NcuRun:
    """Run `app` under ncu, retrying without rejected metrics, then export the raw CSV page.

    Writes work_dir/counters.ncu-rep and work_dir/ncu.log; on_line sees every output line (progress).
    If the NVTX filter matched no kernel, profiles once more without it (every kernel; the caller maps by range).
    Raises NcuProblem when nothing was profiled, with ncu's reason.
    """
    t0 = time.perf_counter()
    metrics, dropped = list(metrics), []
    report, log_path = work_dir / "counters.ncu-rep", work_dir / "ncu.log"
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    while True:
        report.unlink(missing_ok=True)
        code, log = _run_logged(command(ncu, metrics, app, report, nvtx_include), log_path, on_line)
        if reason := permission_problem(log):
            raise NcuProblem(reason)
        rejected = rejected_metrics(log, metrics)
        if rejected and len(rejected) < len(metrics):
            metrics = [m for m in metrics if m not in rejected]
            dropped += rejected
            on_line(f"retry: ncu does not know {', '.join(rejected)}")
            continue
        if not report.is_file() and nvtx_include and "No kernels were profiled" in log:
            nvtx_include = None
            on_line("retry: the NVTX filter matched no kernel; profiling every kernel")
            continue
        break
    if not report.is_file():
        errors = [ln for ln in log.splitlines() if ln.startswith("==ERROR==")]
        raise NcuProblem(f"ncu profiled nothing (exit {code}): {errors[0] if errors else 'see ' + str(log_path)}")
    export = subprocess.run([ncu, "--import", str(report), "--csv", "--page", "raw", "--print-units", "base"],
                            capture_output=True, text=True, errors="replace")
    if export.returncode != 0:
        raise NcuProblem(f"ncu could not export {report}: {export.stderr.strip()[:300]}")
    header = next(csv.reader(ln for ln in export.stdout.splitlines() if not ln.startswith("==")), [])
    silent = [m for m in metrics if m not in header]  # some ncu versions drop a name they don't know, silently
    return NcuRun(export.stdout, log, [m for m in metrics if m not in silent], dropped + silent,
                  time.perf_counter() - t0)


@dataclass
class Kernel:
    """One profiled kernel launch: id, name, the NVTX ranges it ran in (as ncu prints them), metrics in base units."""

    id: str
    name: str
    nvtx: str
    metrics: dict[str, float | None]


_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_TIME = {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3, "second": 1.0,
         "s": 1.0}


def parse_value(text: str, unit: str = "") -> float | None:
    """A cell in base units (bytes, seconds, counts); 'n/a' or empty → None. Reads '1,234', 'Kbyte', 'usecond'."""
    text = text.strip().split(" (", 1)[0].replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    unit = unit.strip()
    if unit in _TIME:
        return value * _TIME[unit]
    prefix = unit[:1] if len(unit) > 1 and unit[:1] in "KMGT" and unit[1:2].islower() else ""
    return value * _SCALE[prefix]


def parse_raw_csv(text: str) -> list[Kernel]:
    """`ncu --csv --page raw`: a header, a units row, one row per kernel; metric columns hold '__' in their name."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("==")]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows or "ID" not in rows[0]:
        return []
    header, id_col = rows[0], rows[0].index("ID")
    has_units = len(rows) > 1 and len(rows[1]) > id_col and not rows[1][id_col].strip()
    units, body = (rows[1], rows[2:]) if has_units else ([""] * len(header), rows[1:])
    metric_cols = [i for i, name in enumerate(header) if "__" in name]
    nvtx_cols = [i for i, name in enumerate(header) if "Range" in name or "NVTX" in name.upper()]
    name_col = header.index("Kernel Name") if "Kernel Name" in header else None
    return [Kernel(id=row[id_col], name=row[name_col] if name_col is not None else "",
                   nvtx=" ".join(row[i] for i in nvtx_cols),
                   metrics={header[i]: parse_value(row[i], units[i]) for i in metric_cols})
            for row in body if len(row) >= len(header)]
