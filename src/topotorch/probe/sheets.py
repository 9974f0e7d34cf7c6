"""Which units a probe reads and where they sit: a :class:`Sheet` per module.

Sheets come from a :class:`~topotorch.topography.Topography`, from the ``topo_positions`` buffers a model
carries (attached, or loaded from a saved attached model), or from module paths / glob patterns with a layout
assigned for the probe (a control, or a pretrained model that was never attached).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..hooks import output_shapes, resolve_modules
from ..graph import IN_PERM
from ..layout import POSITIONS, Layout, positions_of, split_positions
from .stats import is_grid

__all__ = ["Sheet", "find_sheets", "saved_positions", "POSITIONS"]



@dataclass
class Sheet:
    """A module whose output units sit on a sheet: ``units`` is ``features`` (last dimension), ``channels``
    (conv channels, a response averaged over locations) or ``locations`` (every channel × location)."""
    name: str
    module: nn.Module
    layout: Layout
    units: str


def _kind(coords: torch.Tensor, units: str) -> str:
    return "retinotopic" if units == "locations" else ("grid" if is_grid(coords) else "explicit")


def _units_for(module: nn.Module, n: int) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "channels" if n == module.out_channels else "locations"
    return "features"


def _match(model: nn.Module, patterns) -> list[str]:
    names = [n for n, _ in model.named_modules() if n]
    out = []
    for p in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hit:
            raise ValueError(f"no module of the model matches {p!r}; modules look like {names[:6]}")
        out += [n for n in hit if n not in out]
    return out


def find_sheets(model: nn.Module, sheets=None, layout: str | Layout = "grid", units: str = "channels",
                example_input=None, seed: int = 0) -> list[Sheet]:
    """The sheets of ``model`` to probe.

    ``sheets``: ``None`` (every module carrying ``topo_positions``: an attached model, or one loaded from a saved
    attached model), a ``Topography``, a dict module path → :class:`Layout`, or module paths / glob patterns
    (``"blocks.*.mlp"``) that get ``layout`` (``"grid"``, ``"retinotopic"`` or a Layout) — this needs
    ``example_input`` to learn the number of units. ``units`` applies to conv modules as in ``attach``.
    The model is not changed (positions assigned here live only in the returned sheets)."""
    from ..topography import Topography, _default_layout, retinotopic
    if isinstance(sheets, Topography):
        if not sheets.attached:
            raise ValueError("this Topography was detached: its positions are gone; pass the model's sheets instead")
        return [Sheet(e["name"], e["module"], sheets.positions(e["name"]), e["units"]) for e in sheets.entries]
    if sheets is None:
        found = {}
        for name, mod in model.named_modules():
            pos = positions_of(mod)
            if pos is not None and IN_PERM not in mod._buffers:  # embed() keeps the *input* layer's positions there
                found[name] = Layout(pos.detach().double().cpu(), kind=_kind(pos, "features"))
        if found and example_input is not None:  # a forward pass tells a block's map units apart
            return find_sheets(model, found, layout, units, example_input, seed)
        for n, lay in found.items():
            mod = model.get_submodule(n)
            if not isinstance(mod, nn.modules.conv._ConvNd) and getattr(mod, "out_features", None) != lay.n:
                raise ValueError(f"cannot tell whether the {lay.n} positioned units of {n} ({type(mod).__name__}) "
                                 "are its last dimension or a conv map's channels/locations: pass example_input "
                                 "(--input-shape C,H,W for an image model)")
        found = [Sheet(n, model.get_submodule(n), lay, _units_for(model.get_submodule(n), lay.n)) for n, lay in found.items()]
        if not found:
            raise ValueError("the model has no sheets: no module carries topo_positions (it was never attached, or "
                             "its positions were not loaded); name the modules to probe (--sheets PATTERN with "
                             "--layout grid|retinotopic)")
        return found
    if units not in ("channels", "locations"):
        raise ValueError(f"units must be 'channels' or 'locations', got {units!r}")
    given = dict(sheets) if isinstance(sheets, dict) else None
    names = list(given) if given is not None else _match(model, [sheets] if isinstance(sheets, str) else list(sheets))
    mods = resolve_modules(model, names)
    need_shapes = example_input is not None or given is None or any(
        isinstance(m, nn.modules.conv._ConvNd) for m in mods.values())
    shapes = {}
    if need_shapes:
        if example_input is None:
            raise ValueError("sheets named without positions need example_input to learn their sizes")
        shapes = output_shapes(model, mods, example_input)
    out = []
    for i, (name, mod) in enumerate(mods.items()):
        conv = isinstance(mod, nn.modules.conv._ConvNd) or len(shapes.get(name, ())) == 4
        u = units if conv else "features"
        lay = given[name] if given is not None else layout
        if conv and isinstance(lay, Layout) and len(shapes.get(name, ())) == 4:
            u = "channels" if lay.n == shapes[name][1] else "locations"  # saved positions say which
        if u == "locations":
            if len(shapes[name]) != 4:
                raise ValueError(f"units='locations' needs a 2D conv map (N, C, H, W); {name} gives {shapes[name]}")
            _, C, H, W = shapes[name]
            n = C * H * W
        else:
            n = shapes[name][1] if u == "channels" else (shapes[name][-1] if name in shapes else None)
        if isinstance(lay, Layout):
            pos = lay
        elif lay == "retinotopic":
            if u != "locations":
                raise ValueError(f"layout 'retinotopic' needs conv modules with units='locations'; {name} is "
                                 f"{type(mod).__name__} with units {u!r}")
            pos = retinotopic(C, H, W, seed=seed + i)
        elif lay == "grid":
            pos = _default_layout(n)
        else:
            raise ValueError(f"unknown layout {lay!r}; use 'grid', 'retinotopic' or a Layout")
        if n is not None and pos.n != n:
            raise ValueError(f"the layout for {name} has {pos.n} units, the module has {n}")
        out.append(Sheet(name, mod, pos, u))
    return out


def saved_positions(path) -> dict[str, Layout]:
    """``{module path: Layout}`` from a saved model: a ``.safetensors`` file, a folder holding
    ``model.safetensors`` (HuggingFace ``save_pretrained``, also sharded), or a state dict.

    Reattach them after ``from_pretrained`` in one line: ``tt.attach(model, saved_positions(folder), ...)``."""
    if isinstance(path, dict):
        pos = split_positions(path)[0]
    else:
        from safetensors.torch import load_file
        p = Path(path)
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"{p}: no .safetensors weights found")
        pos = {}
        for f in files:
            pos.update(split_positions(load_file(str(f)))[0])
    return {k: Layout(v.double(), kind="grid" if is_grid(v.double()) else "explicit") for k, v in pos.items()}
