"""The `clif` command. Each area of the library contributes its subcommands through `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Optional, Sequence

from .errors import Cancelled, ClifError
from .fileio import filesystem_errors
from .progress import Reporter

# Modules that add subcommands; imported only when the CLI runs.
_COMMAND_MODULES = (
    "clif_core.models.cli",
    "clif_core.concepts.cli",
    "clif_core.augment.cli",
    "clif_core.train.cli",
    "clif_core.sample.cli",
    "clif_core.erase.cli",
    "clif_core.sandbox.cli",
    "clif_core.demo",
    "clif_core.bench.cli",
)


def tqdm_reporter(description: str = "") -> Reporter:
    """A Reporter that draws a tqdm bar and stops cleanly (checkpoint, then exit) on the first Ctrl-C or
    SIGTERM. SIGTERM matters for runs started in the background, which inherit an ignored SIGINT: `kill PID`
    then saves the run instead of losing everything since its last periodic checkpoint."""
    from tqdm import tqdm

    state = {"bar": None, "stop": False}
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def on_signal(signum, frame):  # a second signal falls back to the default (Ctrl-C raises, SIGTERM kills)
        state["stop"] = True
        signal.signal(signum, defaults[signum])

    for signum, default in defaults.items():
        if signal.getsignal(signum) is default:  # leave handlers someone else installed, and ignored signals
            signal.signal(signum, on_signal)

    def progress(step: int, total: int, preview=None) -> None:
        bar = state["bar"]
        if bar is None or bar.total != total or step < bar.n:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)
        bar.update(step - bar.n)

    return Reporter(progress=progress, should_stop=lambda: state["stop"], log=lambda m: tqdm.write(m))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clif", description="CLIF concepts and All-but-One erasure")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency, not an area that does not exist yet
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with filesystem_errors():  # a full disk, a read-only folder or a permission problem, wherever it happens
            result = args.func(args)
    except Cancelled as err:
        print(f"clif: cancelled: {err}", file=sys.stderr)
        return 130
    except ClifError as err:
        print(f"clif: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
