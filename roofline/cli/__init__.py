"""The `roofline` command: a thin typer layer — one module per command parses its options and calls one function;
main() turns every user-facing error into one line on stderr and an exit code.

Data goes to stdout (the table, or --json/--csv with '-'); progress and warnings to stderr. Exit codes:
0 ok, 1 regression (compare), 2 bad input (one line, no traceback), 3 could not run. Nothing outside this
package imports it; each command imports what it measures or renders inside its function, so `roofline --help`
stays fast and `report`/`compare` never load torch.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from roofline import __version__
from roofline.cli.catalog import list_ops
from roofline.cli.compare import compare
from roofline.cli.console import command_line, stderr, stdout
from roofline.cli.devices import calibrate, devices
from roofline.cli.profile import profile
from roofline.cli.report import report
from roofline.cli.sweep import sweep
from roofline.cli.tp_scaling import tp_scaling
from roofline.cli.trace import trace
from roofline.errors import EXIT_BAD_INPUT, RooflineError

# An argument's help names what it is ("results.json files (or their folders)"): typer's own type label beside it
# would read "<list[Path]>", a Python type.
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Where a Transformer block spends its time on a GPU, and why.")


def _version(value: bool) -> None:
    if value:
        stdout.print(f"roofline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Where a Transformer block spends its time on a GPU, and why."""


for name, command in (("profile", profile), ("ops", list_ops), ("devices", devices), ("calibrate", calibrate),
                      ("report", report), ("compare", compare), ("sweep", sweep), ("tp-scaling", tp_scaling),
                      ("trace", trace)):
    app.command(name)(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every user-facing error into one line and an exit code.

    Typer raises click's exception classes, which newer typer releases vendor (typer._click) instead of
    importing click: they are recognised by shape (exit_code, format_message), not by import.
    """
    args = sys.argv[1:] if argv is None else argv
    command_line[:] = args
    try:
        result = app(args=args, prog_name="roofline", standalone_mode=False)
    except RooflineError as exc:
        stderr.print(f"roofline: error: {exc}", highlight=False, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        stderr.print("roofline: interrupted (results measured so far are saved)")
        return 130
    except Exception as exc:
        name = type(exc).__name__
        if name == "Exit":
            return int(getattr(exc, "exit_code", 0) or 0)
        if name == "Abort":
            stderr.print("roofline: aborted")
            return 130
        if name == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
            if name == "NoArgsIsHelpError":
                stderr.print(exc.format_message(), highlight=False, markup=False)  # type: ignore[attr-defined]
                return EXIT_BAD_INPUT
            raise
        message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
        stderr.print(f"roofline: error: {message}", highlight=False, markup=False)
        return EXIT_BAD_INPUT
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
