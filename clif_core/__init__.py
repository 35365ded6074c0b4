"""CLIF core library: concept customization (CLIF) and concept erasure (All-but-One) on diffusers.

Pure Python on torch/diffusers/transformers; never imports ComfyUI. Submodules are imported on
demand so that `import clif_core` stays cheap.
"""

__version__ = "0.1.0"
