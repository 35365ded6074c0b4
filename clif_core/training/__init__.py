"""The training machinery every trainer of the pack runs on (CLIF's two stages in `train/`, erasure in `erase/`).

Modules: `loop` (run_training: accumulation, checkpoints, resume, cancel, NaN stop, previews), `precision`
(mixed precision, the accelerator, the half-precision check), `checkpoint` (checkpoint files, safetensors
only), `run_folder` (a run's folder and its resume rules), `result` (what a finished run returns and writes:
the concept file or erasure patch, metrics.json), `optim` (AdamW, 8-bit when bitsandbytes is present), `curve`
(loss CSV and PNG). Nothing here knows a method: a trainer hands the loop a `TrainTask`.
Import the modules directly; this package imports nothing heavy on its own.
"""
