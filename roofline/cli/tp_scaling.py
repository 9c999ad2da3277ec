"""`roofline tp-scaling BASE TP`: tensor-parallel scaling efficiency per op and for the block, from saved runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roofline.cli.console import stdout


def tp_scaling(
    base: Annotated[Path, typer.Argument(metavar="BASE", show_default=False,
                                         help="results.json of the TP=1 run (`roofline profile`).")],
    tp: Annotated[Path, typer.Argument(metavar="TP", show_default=False,
                                       help="results.json of the same block with `roofline profile --tp N`.")],
) -> None:
    """TP scaling efficiency per op and for the block: time(TP=1) / (N·time(TP=N)), and where the time goes."""
    from roofline import results
    from roofline.analysis.scaling import ranks, scaling, split_line
    from roofline.render.table import scaling_table

    base_res, tp_res = results.load(base), results.load(tp)
    rows = scaling(base_res, tp_res)
    stdout.print(scaling_table(rows, rows[0].tp if rows else ranks(tp_res)))
    for res in (base_res, tp_res):
        stdout.print(split_line(res))
