"""Training: one shared loop for every trainer of the pack, and CLIF's two stages.

Modules: `loop` (the loop: accelerate, precision, accumulation, checkpoints, resume, cancel, NaN stop),
`checkpoint` (checkpoint files, safetensors only), `run_folder` (a run's folder and its resume rules),
`optim` (AdamW, 8-bit when bitsandbytes is present), `curve` (loss CSV and PNG), `tokens` (trainable concept
token rows), `text` (prompt encoding), `vision` (the frozen CLIP vision tower), `data` (batch order, hard
negatives, held-out split), `contrastive` (stage 1), `decoder` (stage 2), `prior` (class images),
`stages` (both stages in one call), `cli` (`clif train`). docs/training.md describes them for users.
Import the modules directly; this package imports nothing heavy on its own.
"""
