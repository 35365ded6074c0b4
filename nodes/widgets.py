"""Node widgets from clif_core's option tables (clif_core/options.py): each widget's default, limits, choices
and tooltip come from the setting it sets, so the nodes, the `clif` commands and the dataclasses agree."""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io


def widget(table: Any, path: str, name: str | None = None, tooltip_prefix: str = "", **overrides: Any):
    """The ComfyUI input for option `path` of `table` (a clif_core.options.Options), named `name` (default:
    the field's name). `overrides` are passed on (optional=True, a tooltip, …). The input remembers the table
    and path (`clif_option`), so tests can compare it with the dataclass."""
    option = table[path]
    kwargs: dict[str, Any] = {
        "default": option.widget_default if option.default is None else option.shown_default,
        "tooltip": tooltip_prefix + option.help,
    }
    if option.type is bool:
        kind = io.Boolean
    elif option.choices:
        kind, kwargs["options"] = io.Combo, list(option.choices)
    elif option.type in (int, float):
        kind = io.Int if option.type is int else io.Float
        kwargs.update({k: getattr(option, k) for k in ("min", "max", "step") if getattr(option, k) is not None})
    else:
        kind = io.String
    kwargs.update(overrides)
    made = kind.Input(name or path.rsplit(".", 1)[-1], **kwargs)
    made.clif_option = (table.name, path)
    return made


def widgets(table: Any, names: dict[str, str], **overrides: Any) -> list:
    """One widget per entry of `names` (input name → option path), in order."""
    return [widget(table, path, name, **overrides) for name, path in names.items()]


def settings(names: dict[str, str], inputs: dict[str, Any]) -> dict[str, Any]:
    """The option paths and values of the node inputs named in `names` that the node was given."""
    return {path: inputs[name] for name, path in names.items() if name in inputs}
