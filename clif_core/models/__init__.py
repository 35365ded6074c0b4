"""Base models: loading (diffusers folders, single files), family detection, tiny fixtures, and the
services every method uses on a loaded model (the bottom layer: nothing here imports a method or the sampler).

Public API (import from the submodules; this package imports nothing heavy so the pack starts fast):
- `loader.load_base_model(path, *, device=None, dtype=None, prediction_type=None) -> BaseModel`
- `families.FAMILIES`, `get_family`, `detect_family_from_state_dict`, `detect_family_from_diffusers_dir`
- `device.pick_device_and_dtype(prefer=None) -> (device, dtype)`
- `fingerprint.fingerprint(unet, text_encoders) -> str`
- `ldm_layout.to_original_state_dict(base)`, `save_single_file(base, path)`: the layout ComfyUI loads
- `tiny.build_tiny_model`, `build_tiny_vision_tower`, `write_tiny_model`: small SD-shaped test models
- `random_model.build_published_architecture`: SD 1.5 / 2.1 / XL shapes with random weights (benchmarks)
- `clip_bpe.clip_tokenizer(pad_token)`: CLIP's tokenizer from the bundled BPE files
- `prompts`: prompt → UNet conditioning (`encode_text`, `encode_prompt`, `unet_conditioning`, `sdxl_time_ids`)
- `vae`: `vae_factor`, `native_resolution`, `encode_pixels`, `encode_image`, `decode_latents` (one upcast rule)
- `denoise`: one guided denoising step / loop over a model callable with a callback; `ddim_scheduler`
- `pipeline.diffusers_pipeline(base)`: a diffusers pipeline over the base's own components
"""
