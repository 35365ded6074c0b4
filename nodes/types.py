"""Custom ComfyUI socket types of the pack (shared by every node module)."""

from comfy_api.v0_0_2 import io

BaseModelType = io.Custom("CLIF_BASE_MODEL")
ConceptsType = io.Custom("CLIF_CONCEPTS")
