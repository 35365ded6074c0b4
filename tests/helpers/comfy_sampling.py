"""Names, as ComfyUI's nodes take them, of the files the `comfy_sample_concepts` fixture (conftest.py) installs
in the real server."""

CHECKPOINT = "checkpoints/tiny_sd1.safetensors"
CONCEPTS = "sample_alice_bob.safetensors"
