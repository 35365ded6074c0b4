"""Running `clif` in-process the way a shell would see it."""

from __future__ import annotations

from clif_core.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `clif argv`; argparse's usage errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err
