"""CLIF's two training stages, on the shared machinery of `clif_core.training`.

Modules: `contrastive` (stage 1), `decoder` (stage 2), `both_stages` (both stages in one call), `tokens`
(trainable concept token rows), `vision` (the frozen CLIP vision tower), `data` (batch order, hard negatives,
held-out split), `prior` (class images), `leakage` (previews of each concept alone and together), `cli`
(`clif train`). A stage returns a `clif_core.training.result.RunResult`. docs/training.md describes them for
users. Import the modules directly; this package imports nothing heavy on its own.
"""
