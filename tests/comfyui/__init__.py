"""The real-ComfyUI test rig: rig.py (install, server, HTTP helpers) and fixtures.py (pytest plugin)."""
