"""Workflow tooling shared by scripts/build_workflows.py and the workflow tests.

`build_ui_workflow` turns a compact description (nodes with titles, widget values by input name, links by
node key and output name, groups) into ComfyUI's UI format (version 0.4, what the editor saves), taking the
widget order, socket types and output names from a live /object_info. `lower_steps` shortens a converted API
prompt for CI. `prepare_examples` gives a test server what a fresh install of the pack has in input/ and, until
the sandbox model is committed, the default base model the shipped workflows name.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_STEPS = re.compile(r"^(steps|.*_steps)$")
NODE_WIDTH = 340
ROW = 26
GAP = 40
GROUP_PAD = 40


@dataclass
class Node:
    """One node: `key` names it inside the description; `links` maps an input name to (node key, output name)."""

    key: str
    type: str
    title: str
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class Group:
    title: str
    nodes: list[Node]
    color: str = "#3f789e"


@dataclass
class Workflow:
    name: str
    groups: list[Group]
    note: str = ""


def _input_specs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the node's declared order."""
    order = info.get("input_order") or {}
    specs = []
    for section in ("required", "optional"):
        declared = (info.get("input") or {}).get(section) or {}
        for name in order.get(section) or list(declared):
            specs.append((name, declared[name], section == "optional"))
    return specs


def _is_widget(spec: list) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _has_control_widget(name: str, spec: list) -> bool:
    """Whether the editor adds a 'control after generate' widget (one more widgets_values slot) after this one:
    the input's flag, and for INT inputs named seed or noise_seed even without it (frontend 1.32's rule)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if spec[0] == "INT":
        return bool(options.get("control_after_generate", name in ("seed", "noise_seed")))
    return bool(options.get("control_after_generate"))


def _default(spec: list) -> Any:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options")
    if choices:
        return choices[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0])


def _choices(spec: list) -> Optional[list]:
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return (spec[1] or {}).get("options")
    return None


def build_ui_workflow(wf: Workflow, object_info: dict) -> dict:
    """The UI-format JSON of `wf`; raises ValueError for an unknown node, input, output or combo value."""
    nodes_out, links_out, groups_out = [], [], []
    ids: dict[str, int] = {}
    by_key: dict[str, Node] = {}
    for group in wf.groups:
        for node in group.nodes:
            if node.type not in object_info:
                raise ValueError(f"{wf.name}: node type {node.type} is not installed")
            ids[node.key] = len(ids) + 1
            by_key[node.key] = node
    ui_nodes: dict[str, dict] = {}
    x = 0
    for g_index, group in enumerate(wf.groups):
        y = GROUP_PAD + 40
        width = 0
        for node in group.nodes:
            info = object_info[node.type]
            specs = _input_specs(info)
            names = {n for n, _s, _o in specs}
            unknown = (set(node.widgets) | set(node.links)) - names
            if unknown:
                raise ValueError(f"{wf.name}/{node.key}: {node.type} has no input(s) {sorted(unknown)}")
            inputs, values = [], []
            for name, spec, optional in specs:
                widget = _is_widget(spec)
                if name in node.links:
                    socket = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": None}
                    if not widget:
                        inputs.append(socket)
                        continue
                    # A linked widget keeps its socket and, as the editor saves it, a value in widgets_values.
                    inputs.append({**socket, "widget": {"name": name}})
                elif not widget:
                    if not optional:
                        raise ValueError(f"{wf.name}/{node.key}: required input {name} of {node.type} is not linked")
                    inputs.append({"name": name, "type": spec[0], "link": None, "shape": 7})
                    continue
                value = node.widgets.get(name, _default(spec))
                choices = _choices(spec)
                if choices is not None and value not in choices:
                    raise ValueError(f"{wf.name}/{node.key}: {value!r} is not an option of {node.type}.{name} "
                                     f"({choices})")
                values.append(value)
                if _has_control_widget(name, spec):
                    values.append("fixed")
            outputs = [{"name": oname, "type": otype, "links": [], "slot_index": i}
                       for i, (otype, oname) in enumerate(zip(info["output"], info["output_name"]))]
            multiline = sum(1 for name, spec, _o in specs if name not in node.links and spec[0] == "STRING"
                            and (spec[1] if len(spec) > 1 else {}).get("multiline"))
            height = 40 + ROW * max(len(inputs), len(outputs)) + ROW * len(values) + 70 * multiline
            if info.get("output_node") or any(o["type"] == "IMAGE" for o in outputs):
                height += 220  # room for the image preview
            ui = {
                "id": ids[node.key], "type": node.type, "pos": [x + GROUP_PAD, y], "size": [NODE_WIDTH, height],
                "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": outputs, "title": node.title,
                "properties": {"Node name for S&R": node.type}, "widgets_values": values,
            }
            ui_nodes[node.key] = ui
            nodes_out.append(ui)
            y += height + GAP
            width = NODE_WIDTH
        groups_out.append({"id": g_index + 1, "title": group.title,
                           "bounding": [x, 0, width + 2 * GROUP_PAD, y + GROUP_PAD], "color": group.color,
                           "font_size": 24, "flags": {}})
        x += width + 2 * GROUP_PAD + GAP
    link_id = 0
    for key, node in by_key.items():
        ui = ui_nodes[key]
        for name, (src_key, out_name) in node.links.items():
            if src_key not in ui_nodes:
                raise ValueError(f"{wf.name}/{key}: links from unknown node {src_key}")
            src = ui_nodes[src_key]
            slot = next((o["slot_index"] for o in src["outputs"] if o["name"] == out_name), None)
            if slot is None:
                raise ValueError(f"{wf.name}/{key}: {src['type']} has no output {out_name!r}")
            link_id += 1
            target_slot = next(i for i, inp in enumerate(ui["inputs"]) if inp["name"] == name)
            ui["inputs"][target_slot]["link"] = link_id
            otype = src["outputs"][slot]["type"]
            src["outputs"][slot]["links"].append(link_id)
            links_out.append([link_id, src["id"], slot, ui["id"], target_slot, otype])
    _set_order(nodes_out, links_out)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-clif/{wf.name}")),
        "revision": 0, "last_node_id": len(nodes_out), "last_link_id": link_id, "nodes": nodes_out,
        "links": links_out, "groups": groups_out, "config": {},
        "extra": {"ds": {"scale": 0.7, "offset": [20, 20]}, "clif_note": wf.note}, "version": 0.4,
    }


def _set_order(nodes: list[dict], links: list[list]) -> None:
    """Execution order (a topological order) as the editor stores it."""
    deps = {n["id"]: {link[1] for link in links if link[3] == n["id"]} for n in nodes}
    done: list[int] = []
    while len(done) < len(nodes):
        ready = [i for i in deps if i not in done and deps[i] <= set(done)]
        if not ready:
            raise ValueError("the workflow has a cycle")
        done.extend(sorted(ready))
    for n in nodes:
        n["order"] = done.index(n["id"])


def lower_steps(api_prompt: dict, steps: int = 2, minimums: Optional[dict[str, int]] = None) -> list[str]:
    """Set every input named steps or *_steps to `steps` (at least the node's `minimums[name]`); return which."""
    changed = []
    for node_id, node in api_prompt.items():
        for name, value in node["inputs"].items():
            if _STEPS.match(name) and isinstance(value, int):
                node["inputs"][name] = max(steps, (minimums or {}).get(name, steps))
                changed.append(f"{node_id}.{name}")
    return changed


# ------------------------------------------------------------------------------- what a fresh install has

CONCEPT_FILE = "sandbox_ada_ida.safetensors"
"""The concept file the training workflow saves and the sampling workflows load (models/clif_concepts/)."""
ISOLATED_FILES = ("sandbox_ada.safetensors", "sandbox_ida.safetensors")
"""One-concept files the isolation workflow binds to the left and the right region (each concept trained alone)."""
SHIPPED_CONCEPT_FILES = {CONCEPT_FILE: ("ada", "ida"), ISOLATED_FILES[0]: ("ada",), ISOLATED_FILES[1]: ("ida",)}
"""The concept files shipped workflows load, with the concepts each holds."""
TINY_BASE = "checkpoints/clif_tiny_sd1.safetensors"
"""Stand-in default base model while the sandbox model is not listed by CLIF Load Base Model."""
TINY_VISION = "clif_tiny_sd1_vision/"
"""Its CLIP vision tower (models/clip_vision, a transformers folder) for the contrastive stage."""


def bundled_examples():
    """nodes/bundled_examples.py, loaded by path: the nodes package itself imports ComfyUI."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("clif_bundled_examples", REPO_ROOT / "nodes" / "bundled_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_base_model(object_info: dict) -> str:
    """The bundled sandbox model when Load Base Model lists it, else the tiny stand-in."""
    options = _choices(object_info["CLIFLoadBaseModel"]["input"]["required"]["base_model"]) or []
    return next((o for o in options if "sandbox" in o.lower()), TINY_BASE)


def default_vision(object_info: dict) -> str:
    """The sandbox vision tower when the training nodes list it, else the tiny stand-in's."""
    spec = object_info.get("CLIFContrastiveTraining", {}).get("input", {}).get("required", {}).get("clip_vision")
    return next((o for o in (_choices(spec) if spec else None) or [] if "sandbox" in o.lower()), TINY_VISION)


def prepare_server(server, scratch: Path, need_base: Optional[str] = None) -> list[str]:
    """Give a fresh test server what the shipped workflows expect; return what was added besides the examples.

    - input/: the pack's example pictures, as nodes/bundled_examples.py copies them at start-up;
    - the tiny stand-in base model (and its vision tower) when a workflow names it (`need_base`, default: when the live list lacks the
      sandbox model);
    The concept file the sampling workflows load comes from the training workflow (run first: names sort);
    `ensure_concept_files` stands in for it (and for the isolation workflow's files) when a sampling workflow runs
    alone.
    """
    added = []
    bundled_examples().install_examples(str(server.input_dir))
    info = server.object_info("CLIFLoadBaseModel")
    options = _choices(info["input"]["required"]["base_model"]) or []
    base_choice = need_base or default_base_model({"CLIFLoadBaseModel": info})
    if base_choice == TINY_BASE and TINY_BASE not in options:
        import shutil

        from clif_core.models.tiny import write_tiny_model

        paths = write_tiny_model("sd1", scratch / "tiny_sd1", seed=0)
        target = server.models_dir / TINY_BASE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths.single_file, target)
        added.append(f"tiny base model {TINY_BASE}")
        vision = server.models_dir / "clip_vision" / TINY_VISION.rstrip("/")
        if not vision.exists():
            shutil.copytree(paths.vision_dir, vision)
            added.append(f"its vision tower clip_vision/{TINY_VISION}")
    return added


def ensure_concept_files(server, base_choice: str, added: Optional[list] = None,
                         files: Sequence[str] = tuple(SHIPPED_CONCEPT_FILES)) -> list[Path]:
    """models/clif_concepts/<file> for each of `files` (names from SHIPPED_CONCEPT_FILES); one that no training
    run wrote is made synthetic for the base model (random tokens and LoRA, a seed per file: it exercises the
    graph, not the quality)."""
    targets = [server.models_dir / "clif_concepts" / f for f in files]
    missing = [t for t in targets if not t.exists()]
    if not missing:
        return targets
    from clif_core.concepts.files import save_concept_file
    from clif_core.models.loader import load_base_model
    from tests.helpers.concept_files import make_concept_file

    kind, name = base_choice.split("/", 1)
    source = server.models_dir / kind / name
    if not source.exists():  # the bundled sandbox model lives in the pack
        from clif_core.models.bundled import SANDBOX_MODEL

        source = SANDBOX_MODEL
    base = load_base_model(str(source))
    for target in missing:
        target.parent.mkdir(parents=True, exist_ok=True)
        seed = list(SHIPPED_CONCEPT_FILES).index(target.name)
        save_concept_file(make_concept_file(base, seed=seed, names=SHIPPED_CONCEPT_FILES[target.name]), target)
        if added is not None:
            added.append(f"synthetic concept file {target.name}")
    return targets
