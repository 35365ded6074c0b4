"""Custom ComfyUI socket types of the pack (shared by every node module)."""

from comfy_api.v0_0_2 import io

BaseModelType = io.Custom("CLIF_BASE_MODEL")
ConceptsType = io.Custom("CLIF_CONCEPTS")
DatasetType = io.Custom("CLIF_DATASET")
ConceptType = io.Custom("CLIF_CONCEPT")
"""One concept before training (clif_core.concepts.spec.Concept): pictures, masks, parts."""
SegmenterType = io.Custom("CLIF_SEGMENTER")
"""A clif_core.augment segmenter (segment-anything, the weight-free fallback, or user masks only)."""
