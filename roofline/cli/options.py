"""Options several commands share (declared once, typer `Annotated` aliases), and parsing of option values.

A value the user typed wrong becomes a RooflineError: one line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roofline.config import BlockConfig
from roofline.errors import RooflineError

Model = Annotated[str, typer.Option(help="Model preset in configs/models, or a .toml path.")]
Batch = Annotated[int, typer.Option(help="Sequences per batch.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: the GPU if any).")]
Budget = Annotated[float | None, typer.Option(help="Timing budget per variant, seconds.")]
JsonOut = Annotated[str | None, typer.Option("--json", help="Also write results JSON here ('-' = stdout).")]
CsvOut = Annotated[str | None, typer.Option("--csv", help="Also write results CSV here ('-' = stdout).")]
Plots = Annotated[bool, typer.Option("--plots/--no-plots", help="Write the figures and report.html.")]


def csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def writable_dir(path: Path) -> Path:
    """`path`, created; one clear line when it cannot be written to."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".roofline-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RooflineError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return path


def fresh(path: Path) -> Path:
    """`path`, or `path`-2, -3… if it already holds a run's files: a folder nobody named is never written over."""
    candidate, n = path, 1
    while (candidate / "results.json").exists() or (candidate / "report.html").exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def default_out_dir(device_slug: str, c: BlockConfig, suffix: str = "") -> Path:
    """reports/<device>-<model>-s<N> (decode: -decode-b<batch>-kv<N>; train: -train-s<N>), a fresh one."""
    if c.mode == "decode":
        name = f"{device_slug}-{c.name}-decode-b{c.batch}-kv{c.kv_cache_len}"
    else:
        name = f"{device_slug}-{c.name}-{'train-' if c.mode == 'train' else ''}s{c.seq_len}"
    return fresh(Path("reports") / (name + suffix))


def parse_seq_lens(text: str) -> list[int]:
    """'1024,2048' → [1024, 2048] (sorted, without repeats)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RooflineError(f"--seq-len takes a comma list of positive integers, got '{text}'") from None
    if not values or min(values) <= 0:
        raise RooflineError(f"--seq-len takes a comma list of positive integers, got '{text}'")
    return sorted(set(values))


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' → 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise RooflineError(f"--threshold must be a fraction or a percentage, e.g. 0.05 or 5%, not '{text}'")
    return value
