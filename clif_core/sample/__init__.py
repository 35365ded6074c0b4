"""Sampling: base model + concept files and erasure patches → images that carry their recipe.

Modules: `config` (SampleConfig, Region), `sampler` (sample, SampleResult, ConceptUse, make_generate),
`schedulers` (Euler, Euler a, DDIM, DPM++ 2M [Karras] from the base model's scheduler config), `regional`
(text-only regional layouts through cross-attention), `isolation` (a file's LoRA under its region's mask),
`recipe` (recipes, save_png/read_png_recipe), `cli` (`clif sample`). Prompt encoding, the VAE and the
guided denoising step are `clif_core.models`' services. Import the modules directly; this package imports
nothing heavy on its own.
"""
