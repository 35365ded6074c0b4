"""Concept erasure: All-but-One (Hong et al., AAAI 2024) with ESD (Gandikota et al., ICCV 2023) as baseline.

Modules: `config` (EraseTarget, EraseConfig, parse_targets, input checks), `conditioning` (the prompt
table every UNet call indexes), `pool` (the x_t pool: DDIM trajectories of the frozen model under each
erased prompt with the frozen predictions the objectives need, generated once per run), `objectives` (the
two losses), `subsets` (which UNet weights train: LoRA, cross-attention K/V, …; the SVD that turns a weight
delta into a LoRA), `latents` (seeded noise, DDIM previews, grids; the VAE and the denoising step are `clif_core.models`'), `trainer`
(erase_concepts on the shared training loop), `patch` (erasure patch files: load, check against a base,
merge, export), `metrics` (what an erasure changed, measured on fixed x_t), `purify` (DDIM inversion under
the original model, regeneration with the erased one), `cli` (`clif erase`).
docs/erasure.md describes the method, every setting and its default.
Import the modules directly; this package imports nothing heavy on its own.
"""
