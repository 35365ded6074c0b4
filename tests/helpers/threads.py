"""Running tiny models on one torch thread (the fixtures `one_thread` and `one_torch_thread` in conftest.py
use this too)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def single_thread():
    """Tiny tensors gain nothing from several threads, and on a busy 2-core machine OpenMP's spinning threads
    made these runs 15× slower (measured: 11 s vs 156 s for one run). The setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
