"""Sampling: base model + concept files and erasure patches → images that carry their recipe.

Modules: `config` (SampleConfig, Region), `sampler` (sample, SampleResult, ConceptUse, make_generate),
`schedulers` (Euler, Euler a, DDIM, DPM++ 2M [Karras] from the base model's scheduler config), `text`
(prompt encoding for SD1/SD2/SDXL), `regional` (text-only regional layouts through cross-attention), `recipe`
(recipes, save_png/read_png_recipe), `cli` (`clif sample`). Import them directly; this package imports
nothing heavy on its own.
"""
