"""The UNet call of a sampling run, replayed as a CUDA graph.

At the batch sizes people sample with (1–4 images, doubled by guidance) a Stable Diffusion UNet step on a
current GPU is bound by Python launching its ~1,000 small kernels one by one, not by the GPU's work: the GPU
idles between them. A CUDA graph records one call's kernels once and replays them with a single launch per
step. The inputs that change between steps (latents, timestep) are copied into fixed buffers before each
replay; the text conditioning is fixed for the whole run. Everything that shapes the call (concept LoRAs,
regional attention processors) must be in place before the graph is recorded, and the graph lives for one
run only, so a model changed between runs is always recorded afresh.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

_WARMUP_STREAMS: dict[torch.device, torch.cuda.Stream] = {}
"""One warm-up stream per device for the whole process: each new stream gets its own cuBLAS workspace (32 MiB
by default), which is kept for the life of the process."""


def _warmup_stream(device: torch.device) -> torch.cuda.Stream:
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if device not in _WARMUP_STREAMS:
        _WARMUP_STREAMS[device] = torch.cuda.Stream(device=device)
    return _WARMUP_STREAMS[device]


class GraphedUNet:
    """`unet(sample, timestep, context, added)` recorded for the shapes and dtypes of the example inputs.

    `context` and `added` (SDXL's pooled text and time ids, or None) are bound for the graph's lifetime.
    Calling it with a new `sample` and `timestep` returns the UNet output (a copy: the graph's own output
    buffer is overwritten by the next replay). Recording runs the UNet `warmup` times on a side stream first
    (lazy initialisations must not happen during capture), then captures on that same stream.
    """

    def __init__(self, unet: Any, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                 added: Optional[dict], warmup: int = 2):
        self.sample = sample.clone()
        self.timestep = timestep.clone()
        self._bound = (context, added)  # the graph reads these tensors in place: keep them alive

        def call() -> torch.Tensor:
            return unet(self.sample, self.timestep, encoder_hidden_states=context, added_cond_kwargs=added,
                        return_dict=False)[0]

        side = _warmup_stream(sample.device)
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                call()
        torch.cuda.current_stream(sample.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=side):
            self.out = call()

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        self.sample.copy_(sample)
        self.timestep.copy_(timestep)
        self.graph.replay()
        return self.out.clone()
