"""Base models: loading (diffusers folders, single-file checkpoints), family detection, tiny fixtures."""
