"""Shared fixtures: tiny models written once per session, no model hub, no network beyond loopback."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

pytest_plugins = ["tests.comfyui.fixtures"]  # the real-ComfyUI server fixture `comfy_server`

# huggingface_hub reads HF_HUB_OFFLINE when it is first imported, so it is set before any test imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _is_loopback(host) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


class NetworkAttempts(list):
    """Every refused attempt to reach a non-loopback address during a test: (what, address)."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch) -> NetworkAttempts:
    """Hub look-ups off, and any connection or name look-up beyond loopback refused and recorded.

    Recording matters: a library that catches the refusal and falls back would otherwise hide the attempt.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    attempts = NetworkAttempts()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            attempts.append(("connect", address))
            raise ConnectionRefusedError(f"test guard: network access to {address!r} is not allowed")

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            attempts.append(("getaddrinfo", host))
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: name look-up of {host!r} is not allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one thread: their ops are too small to split, and on a shared CPU extra
    threads mostly wait for each other. A module takes it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    from tests.helpers.threads import single_thread

    with single_thread():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """one_torch_thread for a whole module at once, its module-scoped fixtures included (the erasure tests take it
    with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    from tests.helpers.threads import single_thread

    with single_thread():
        yield


@pytest.fixture(scope="module")
def sd1():
    """A tiny SD1.x-shaped model in memory (seed 0), one per test module."""
    from clif_core.models.tiny import build_tiny_model

    return build_tiny_model("sd1", 0)


@pytest.fixture(scope="module")
def sdxl():
    """A tiny SDXL-shaped model in memory (seed 0), one per test module."""
    from clif_core.models.tiny import build_tiny_model

    return build_tiny_model("sdxl", 0)


def _tiny(family: str, tmp_path_factory):
    from clif_core.models.tiny import write_tiny_model

    return write_tiny_model(family, tmp_path_factory.mktemp(f"tiny_{family}"), seed=0)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory):
    """TinyPaths of the tiny SD1.x-shaped model (seed 0): diffusers folder, single file, vision tower."""
    return _tiny("sd1", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory):
    """TinyPaths of the tiny SD2.x-shaped model (seed 0, v-prediction)."""
    return _tiny("sd2", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """TinyPaths of the tiny SDXL-shaped model (seed 0): two text encoders, text_time embeddings."""
    return _tiny("sdxl", tmp_path_factory)


@pytest.fixture(scope="module")
def loaded_sd1(tiny_sd1):
    """The tiny SD1.x model loaded from its diffusers folder, as a user's model is (one per test module)."""
    from clif_core.models.loader import load_base_model

    return load_base_model(tiny_sd1.diffusers_dir)


@pytest.fixture(scope="module")
def mix_dataset(tmp_path_factory):
    """alice and bob at 32 px (tests/helpers/datasets.py): two Mix samples and one single picture of each."""
    from tests.helpers.datasets import make_dataset

    return make_dataset(tmp_path_factory.mktemp("ds") / "alice_bob", resolution=32, n_global=0, n_region=0,
                        n_mix=2, n_single=2)


COMFY_TINY_SD1 = "checkpoints/tiny_sd1.safetensors"


@pytest.fixture(scope="module")
def comfy_tiny_sd1(comfy_server, tiny_sd1) -> str:
    """The tiny SD1 checkpoint in the real ComfyUI server's models/checkpoints; its name as nodes take it."""
    import shutil

    target = comfy_server.models_dir / COMFY_TINY_SD1
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy(tiny_sd1.single_file, target)
    return COMFY_TINY_SD1


@pytest.fixture(scope="module")
def comfy_sample_concepts(comfy_server, comfy_tiny_sd1, tiny_sd1):
    """The tiny SD1 checkpoint and a concept file for it in the server's folders; the base as the core loads it.

    The files' names as nodes take them are tests/helpers/comfy_sampling.py's CHECKPOINT and CONCEPTS."""
    from clif_core.concepts.files import save_concept_file
    from clif_core.models.loader import load_base_model
    from tests.helpers.comfy_sampling import CONCEPTS
    from tests.helpers.concept_files import make_concept_file

    base = load_base_model(tiny_sd1.single_file, device="cpu")
    concepts = make_concept_file(base, seed=5, text_lora=False)
    save_concept_file(concepts, comfy_server.models_dir / "clif_concepts" / CONCEPTS)
    return base, concepts


# ------------------------------------------------------------------------------ erasure patch (test_erase_*)


@pytest.fixture(scope="session")
def made(tiny_sd1, tmp_path_factory):
    """A tiny base, an erasure patch made on it (cross-attention weights, SVD-factorised) and its path."""
    from clif_core.erase.config import EraseTarget
    from clif_core.erase.trainer import erase_concepts
    from clif_core.models.loader import load_base_model
    from tests.helpers.erasure import tiny_config
    from tests.helpers.threads import single_thread

    root = tmp_path_factory.mktemp("erase_patch")
    base = load_base_model(tiny_sd1.diffusers_dir, device="cpu")
    targets = [EraseTarget("a photo of a pig", "a photo of a cow")]
    with single_thread():
        result = erase_concepts(base, tiny_config("all-but-one", "xattn", targets=targets, steps=4), root / "run",
                                root / "patch.safetensors")
    return base, result.file, root / "patch.safetensors"


@pytest.fixture(scope="session")
def other_base(tmp_path_factory):
    """The tiny SD1 model of another seed, loaded: a base an erasure patch of `made` was not made on."""
    from clif_core.models.loader import load_base_model
    from clif_core.models.tiny import write_tiny_model

    paths = write_tiny_model("sd1", tmp_path_factory.mktemp("tiny_other"), seed=1)
    return load_base_model(paths.diffusers_dir, device="cpu")
