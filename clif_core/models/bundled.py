"""Models the pack ships: the sandbox base model (diffusers folder) and its CLIP vision tower.

They are the embedded default of the main job, the workflows and the Load Base Model list; the folders
exist only once the sandbox pretraining's weights are committed (see docs/sandbox.md).
"""

from pathlib import Path

SANDBOX_WEIGHTS = Path(__file__).resolve().parents[1] / "sandbox" / "weights" / "base"
SANDBOX_MODEL = SANDBOX_WEIGHTS / "diffusers"
SANDBOX_VISION = SANDBOX_WEIGHTS / "vision"
SANDBOX_RECORD = SANDBOX_MODEL / "sandbox_model.json"
SANDBOX_CHOICE = "sandbox/clif-sandbox (built in)"
SANDBOX_VISION_CHOICE = "clif-sandbox vision tower (built in)"


def sandbox_available() -> bool:
    return (SANDBOX_MODEL / "model_index.json").is_file()
