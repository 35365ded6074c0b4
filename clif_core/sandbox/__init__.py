"""The sandbox: a procedural 64×64 world with exact ground truth, an oracle that reads it back, and a small
Stable Diffusion-architecture base model pretrained on it (see docs/sandbox.md)."""
