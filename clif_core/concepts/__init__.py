"""Concepts: what the user trains (spec), the concept file v1 (file_format: the format; files: save/load;
checks: validation and the fit to a base model; header: safe safetensors header reads; thumbnail; lora_keys),
its exports to ComfyUI/diffusers files (exports) and applying concept files to a diffusers-side base model
(apply).

Nothing is imported here so that importing the package stays cheap; import the submodule you need.
"""
