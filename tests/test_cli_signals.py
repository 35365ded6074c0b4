"""The CLI's progress reporter stops a long run cleanly on SIGTERM too, not only on Ctrl-C.

A run started in the background (`nohup clif ... &`) inherits an ignored SIGINT, so before this only the
periodic checkpoints protected it from `kill`. The child below is what a training loop does with the reporter:
work until `should_stop()`, then save and exit normally.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import sys, time
    from clif_core.cli import tqdm_reporter
    reporter = tqdm_reporter("work")
    print("ready", flush=True)
    deadline = time.time() + 60
    while not reporter.should_stop():
        if time.time() > deadline:
            print("never stopped", flush=True)
            sys.exit(3)
        time.sleep(0.01)
    print("saved and stopped", flush=True)
    """
)


def _start(ignore_sigint: bool) -> subprocess.Popen:
    def preexec() -> None:  # ignored: what a shell's `&` does to a background job (pytest itself may be one)
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec
    )
    assert child.stdout.readline().strip() == "ready"
    return child


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_a_background_run_cleanly():
    child = _start(ignore_sigint=True)
    child.send_signal(signal.SIGINT)  # ignored, as the shell arranged
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "saved and stopped"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_still_stops_a_foreground_run_cleanly():
    child = _start(ignore_sigint=False)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "saved and stopped"
