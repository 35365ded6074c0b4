"""Runs inside ComfyUI's Python environment (ComfyUI's folder on sys.path, see rig.comfy_subprocess_env):
loads tiny models with nodes/comfy_models.py and measures them against the diffusers reference.

    python comfy_models_probe.py OUT.json FAMILY=MODEL_DIR [FAMILY=MODEL_DIR ...] [refusals=SINGLE_FILE]

MODEL_DIR is what `write_tiny_model` wrote (a single file, a diffusers/ folder), or a folder holding only a
diffusers/ folder (the sandbox model). For each family it reports
how far ComfyUI's text conditioning, UNet, VAE and noise schedule are from the diffusers model, whether an
`embedding:name` holding the token rows of two words conditions exactly like the words, and what the stock
KSampler + VAEDecode produce. `refusals` loads copies of a single file with edited stored configs that
ComfyUI cannot run. The test (tests/test_comfy_models.py) judges the results.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from pack_modules import pack_module  # this script's folder is sys.path[0]

WORDS = "red dog"
PROMPT = "a photo of a red dog"
OTHER_PROMPT = "a blue house on a hill"


def _comfy_models():
    return pack_module("comfy_models")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _reference_conditioning(ref, prompt: str):
    """What a diffusers pipeline conditions on: SD1/SD2 the last hidden state, SDXL the penultimate layer of
    both encoders (concatenated) and the projected pooled output of the second."""
    states, pooled = [], None
    for slot in ref.text:
        ids = slot.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = slot.encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2] if ref.family == "sdxl" else out.last_hidden_state)
        pooled = getattr(out, "text_embeds", None)
    return torch.cat(states, dim=-1), pooled


def _write_word_embedding(ref, folder: Path) -> str:
    """An embedding file whose vectors are the token-embedding rows of WORDS, one key per encoder slot."""
    from safetensors.torch import save_file

    tensors = {}
    for slot in ref.text:
        ids = slot.tokenizer(WORDS, add_special_tokens=False).input_ids
        tensors[slot.name] = slot.encoder.get_input_embeddings().weight[ids].detach().clone().contiguous()
    save_file(tensors, str(folder / "reddog.safetensors"))
    return "reddog"


def probe(family: str, model_dir: Path, work: Path) -> dict:
    import nodes  # ComfyUI's own nodes.py
    from clif_core.models.loader import load_base_model

    mod = _comfy_models()
    ref = load_base_model(model_dir / "diffusers", device="cpu", dtype=torch.float32)
    emb_dir = work / f"embeddings-{family}"
    emb_dir.mkdir()
    emb_name = _write_word_embedding(ref, emb_dir)
    sources = [("single_file", f) for f in model_dir.glob("*.safetensors")] + [("diffusers", model_dir / "diffusers")]
    result: dict = {}
    for source_kind, source in sources:
        model, clip, vae = mod.load_comfy_checkpoint(source, str(emb_dir))
        out: dict = {"model_class": type(model.model.model_config).__name__}
        torch.manual_seed(0)
        with torch.no_grad():
            ref_cond, ref_pooled = _reference_conditioning(ref, PROMPT)
            cond, pooled = clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True)
            out["text"] = _max_diff(cond, ref_cond)
            if ref_pooled is not None:
                out["pooled"] = _max_diff(pooled, ref_pooled)

            x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
            kwargs, ref_kwargs = {}, {}
            if family == "sdxl":
                size = dict(width=64, height=64, crop_w=0, crop_h=0, target_width=64, target_height=64)
                kwargs["y"] = model.model.encode_adm(pooled_output=ref_pooled, **size)
                ref_kwargs["added_cond_kwargs"] = {"text_embeds": ref_pooled,
                                                   "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
            eps = model.model.diffusion_model(x, timesteps=t, context=ref_cond, **kwargs)
            out["unet"] = _max_diff(eps, ref.unet(x, t, encoder_hidden_states=ref_cond, **ref_kwargs).sample)

            z = torch.randn(1, 4, 8, 8)
            out["vae"] = _max_diff(vae.first_stage_model.decode(z), ref.vae.decode(z).sample)
            alphas = ref.scheduler.alphas_cumprod
            sigmas = model.get_model_object("model_sampling").sigmas
            out["sigmas"] = _max_diff(sigmas, ((1 - alphas) / alphas) ** 0.5)
            out["latent_scale"] = model.model.latent_format.scale_factor
            out["vae_scale"] = ref.vae.config.scaling_factor

        if source_kind == sources[0][0]:
            out.update(_run_stock_nodes(nodes, model, clip, vae, emb_name))
        result[source_kind] = out
    return result


def _run_stock_nodes(nodes, model, clip, vae, emb_name: str) -> dict:
    """CLIPTextEncode (with and without `embedding:`), KSampler and VAEDecode, as a graph runs them."""
    encode = nodes.CLIPTextEncode()
    out: dict = {}
    with torch.inference_mode():
        words = encode.encode(clip, PROMPT)[0]
        embedded = encode.encode(clip, f"a photo of a embedding:{emb_name}")[0]
        other = encode.encode(clip, OTHER_PROMPT)[0]
        negative = encode.encode(clip, "")[0]
        out["embedding_vs_words"] = _max_diff(embedded[0][0], words[0][0])
        out["other_vs_words"] = _max_diff(other[0][0], words[0][0])
        latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        images = {}
        for name, positive in (("words", words), ("other", other)):
            sampled = nodes.common_ksampler(model, 7, 2, 4.0, "euler", "normal", positive, negative, latent)[0]
            images[name] = nodes.VAEDecode().decode(vae, sampled)[0]
    out["image_shape"] = list(images["words"].shape)
    out["image_range"] = [images["words"].min().item(), images["words"].max().item()]
    out["image_finite"] = bool(torch.isfinite(images["words"]).all())
    out["image_other_vs_words"] = _max_diff(images["other"], images["words"])
    return out


# Stored-config edits that describe a model ComfyUI's classes cannot hold, by the field they change.
REFUSALS = {
    "text_encoder.vocab_size": ("text_encoder", "vocab_size", 1000),
    "scheduler.prediction_type": ("scheduler", "prediction_type", "sample"),
}


def refusals(single_file: Path, work: Path) -> dict:
    """Copies of a tiny single file whose stored configs were edited: what load_comfy_checkpoint says."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from clif_core.errors import ClifError
    from clif_core.models.loader import CONFIGS_METADATA_KEY

    mod = _comfy_models()
    with safe_open(str(single_file), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for i, (name, (component, field, value)) in enumerate(REFUSALS.items()):
        configs = json.loads(metadata[CONFIGS_METADATA_KEY])
        configs[component][field] = value
        path = work / f"refused-{i}.safetensors"  # a neutral name: the message must name the field itself
        save_file(tensors, str(path), metadata={**metadata, CONFIGS_METADATA_KEY: json.dumps(configs)})
        try:
            mod.load_comfy_checkpoint(path, None)
            out[name] = {"path": str(path), "error": None}
        except ClifError as err:
            out[name] = {"path": str(path), "error": str(err)}
    return out


def main(argv: list[str]) -> None:
    from comfy.cli_args import args

    args.cpu = True
    args.fp32_text_enc = True  # ComfyUI stores text encoders in fp16 on CPU by default; compare exactly
    out_path, jobs = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    from clif_core.errors import ClifError

    results = {}
    with tempfile.TemporaryDirectory() as work:
        for family, folder in jobs:
            if family == "refusals":
                results[family] = refusals(Path(folder), Path(work))
                continue
            began = time.monotonic()
            try:
                results[family] = probe(family, Path(folder), Path(work))
            except ClifError as err:  # the adapter refused the model: report it, go on with the others
                results[family] = {"error": str(err)}
            results[family]["seconds"] = time.monotonic() - began
    out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
