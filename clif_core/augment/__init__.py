"""CLIF's data pipeline: segment concept pictures, compose Global/Region/Mix/single samples, write the dataset.

Modules: `segment` (the interface), `fallback` and `sam` (backends), `parts` (regions → named parts),
`common_concepts` (pictures of the words the model already knows, set beside a concept), `compose`
(AugmentConfig and the compositions), `dataset` (build/load/preview), `cli` (`clif augment`). Import them
directly; this package imports nothing heavy on its own.
"""
