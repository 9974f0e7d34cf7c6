"""Make any model topographic without rewriting it, in the spirit of ``torch.nn.utils.prune``.

``topo = tt.attach(model, ["conv1", "conv2"], units="locations", example_input=x[:2])`` gives each named
module's output units positions (a buffer ``topo_positions`` on the module, so ``model.state_dict()`` saves
them and loading restores them) and returns a :class:`Topography` whose call is the loss to add::

    loss = task_loss + topo()

Units per module type:

- ``nn.Linear`` (and any module whose output's last dimension holds the units, e.g. a transformer's
  attention or MLP block): the output features; every other dimension is a sample.
- ``nn.Conv2d`` with ``units="channels"``: the channels on a sheet, every image location a sample.
- ``nn.Conv2d`` with ``units="locations"``: every channel × location is a unit on a retinotopic sheet
  (TDANN): location anchors on a grid, each channel offset within the anchor's cell, plus jitter.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import layout as L
from .costs.correlation import MAX_EXACT_UNITS, SpatialCorrelationLoss, check_alpha, correlation_matrix
from .hooks import output_shapes, record, resolve_modules, unwrap_compiled
from .costs.smoothness import WeightSmoothness, sheet_shape
from .layout import POSITIONS, Layout, positions_of, set_positions

__all__ = ["attach", "detach", "is_attached", "Topography", "retinotopic", "window_radius", "POSITIONS", "WINDOW_UNITS"]



def retinotopic(channels: int, height: int, width: int, spacing: float | None = None, jitter: float = 0.1,
                seed: int = 0) -> Layout:
    """TDANN-style positions of the ``C·H·W`` units of a conv feature map (channel-major, as
    ``output.flatten(1)``): location ``(y, x)`` anchors at ``((x + ½)s, (y + ½)s)`` with ``s = spacing``
    (default √C, about one unit per cell²), each channel shifted by its own offset, uniform within the
    anchor's cell, and every unit jittered by ``jitter·s`` (Gaussian)."""
    if min(channels, height, width) < 1:
        raise ValueError(f"empty feature map {channels}×{height}×{width}")
    s = float(spacing or math.sqrt(channels))
    rs = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    anchors = np.stack([(xx.ravel() + 0.5) * s, (yy.ravel() + 0.5) * s], 1)          # (H·W, 2)
    offsets = rs.uniform(-s / 2, s / 2, size=(channels, 1, 2))
    pos = anchors[None] + offsets + rs.normal(scale=jitter * s, size=(channels, height * width, 2))
    return Layout(torch.tensor(pos.reshape(-1, 2)), kind="retinotopic")


WINDOW_UNITS = 500  # units in one sampled window of a retinotopic sheet by default (TDANN: about 500)


def window_radius(layout: Layout, units: int = WINDOW_UNITS) -> float:
    """The sup-norm radius whose square window holds about ``units`` units at ``layout``'s mean density
    (units per area of its bounding box): ``½·√(units · area / n)``."""
    c = layout.unit_coords
    extent = (c.max(0).values - c.min(0).values).clamp_min(1e-12)
    area = float(extent.prod()) if c.shape[1] > 1 else float(extent[0])
    side = math.sqrt(units * area / layout.n) if c.shape[1] > 1 else units * area / layout.n
    return side / 2


def alpha_on(alpha) -> bool:
    return any(v > 0 for v in alpha.values()) if isinstance(alpha, dict) else alpha > 0


def _default_layout(n: int) -> Layout:
    h, w = sheet_shape(n)  # row-major h × w cells, the same sheet TopoLoss uses
    return L.grid(h, w, spacing=1.0)


STATE = "_topo_state"  # on the model: the attached Topography, found again by detach / is_attached


class Topography:
    """Positions and topographic losses attached to a model's modules. Call it for the loss.

    Built by :func:`attach`; :func:`detach` (or :meth:`remove`) takes everything off the model again.

    Attributes:
        names: the attached modules' paths in ``model.named_modules()``; ``positions(name)`` their :class:`Layout`.
    """

    def __init__(self, model: nn.Module, entries: list, alpha, smoothness: float, factor: float,
                 mode: str, kind: str, radius: dict, neighbourhoods: int, seed: int, max_exact_units: int):
        self.model, self.entries = model, entries
        self.alpha, self.smoothness = alpha, smoothness
        self.names = [e["name"] for e in entries]
        on = alpha_on(alpha)
        weighted = [e["module"] for e in entries if e["units"] != "locations"]
        self.weights = WeightSmoothness(weighted, factor) if smoothness > 0 and weighted else None
        self.correlation = SpatialCorrelationLoss(
            [(e["name"], e["module"], self.positions(e["name"]), e["units"]) for e in entries],
            alpha=alpha, mode=mode, kind=kind, radius=radius, neighbourhoods=neighbourhoods,
            generator=torch.Generator().manual_seed(seed), model=model, max_exact_units=max_exact_units) if on else None
        self.radius = radius  # per sheet: the window-by-window pre-optimisation reuses it
        self._hook = unwrap_compiled(model).register_load_state_dict_post_hook(lambda m, keys: self.refresh())
        self.attached = True

    def positions(self, name: str) -> Layout:
        e = self._entry(name)
        return Layout(getattr(e["owner"], POSITIONS).detach().double().cpu(), kind=e["kind"])

    def _entry(self, name: str) -> dict:
        for e in self.entries:
            if e["name"] == name:
                return e
        raise KeyError(f"{name!r} is not attached; attached: {self.names}")

    def __call__(self) -> torch.Tensor:
        """α · spatial correlation loss (last forward pass) + smoothness · TopoLoss of the weights."""
        if not self.attached:
            raise RuntimeError("this Topography was detached from its model; attach again for a loss")
        total = None
        if self.correlation is not None:
            total = self.correlation()
        if self.weights is not None:
            w = self.smoothness * self.weights()
            total = w if total is None else total + w
        if total is None:
            raise RuntimeError("no loss is enabled (alpha and smoothness are both 0)")
        return total

    def clear(self) -> None:
        """Forget the activations of a forward pass whose loss will not be computed."""
        if self.correlation is not None:
            self.correlation.clear()

    def refresh(self) -> None:
        """Re-read positions from the modules' buffers (after ``load_state_dict``)."""
        if self.correlation is not None:
            for s in self.correlation.sheets:
                s.layout = self.positions(s.name)
            self.correlation.refresh()

    @torch.no_grad()
    def optimize_positions(self, *inputs, windows: int = 50, swaps: int = 50, radius: float | None = None,
                           seed: int = 0, kind: str | None = None, batched: bool = False) -> dict:
        """TDANN's swap pre-optimisation on the responses to ``inputs``: positions are swapped inside local
        windows when that lowers the spatial loss; the buffers are updated. Returns per-module info.

        ``windows × swaps`` candidates are tried. Sheets of up to :data:`~topotorch.swaps.SHEET_SWAP_UNITS`
        (4096) units score each swap on the whole sheet (:func:`~topotorch.swaps.swap_optimize`; ``batched=True``:
        :func:`~topotorch.swaps.swap_optimize_batched`, thousands of candidates per product); larger sheets
        window by window, as TDANN (:func:`~topotorch.swaps.swap_optimize_windows`, memory O(units + window²)).
        ``radius`` defaults to the sheet's sampled-loss radius on the window path, and on the whole-sheet path
        to 2 (grids) or ``2√n/8`` (retinotopic sheets, in their own units)."""
        from .swaps import SHEET_SWAP_UNITS, swap_optimize, swap_optimize_batched, swap_optimize_windows
        if any(e["shared"] for e in self.entries):
            raise ValueError("these sheets share their positions with a neuron graph (attach(..., graph=)): a swap "
                             "search per sheet would move the graph's layout under its other sheets; optimise "
                             "positions before building the graph, or attach without graph=")
        model = unwrap_compiled(self.model)
        was = model.training
        model.eval()
        try:
            with record({e["name"]: e["module"] for e in self.entries},
                        {e["name"]: e["units"] for e in self.entries}) as got:
                model(*inputs)
        finally:
            model.train(was)
        if self.correlation is not None:
            self.correlation.clear()
        info = {}
        k = kind or (self.correlation.kind if self.correlation is not None else "relative")
        for e in self.entries:
            lay = self.positions(e["name"])
            acts = got[e["name"]][0].float().cpu()
            if lay.n > SHEET_SWAP_UNITS:
                rad = radius if radius is not None else self.radius[e["name"]]
                new, info[e["name"]] = swap_optimize_windows(acts, lay, windows, swaps, rad, kind=k, seed=seed)
            else:
                r = correlation_matrix(acts)
                rad = radius if radius is not None else (2.0 if lay.kind != "retinotopic" else 2.0 * math.sqrt(lay.n) / 8)
                if batched:
                    new, info[e["name"]] = swap_optimize_batched(r, lay, windows * swaps, rad, kind=k, seed=seed)
                else:
                    new, info[e["name"]] = swap_optimize(r, lay, windows, swaps, rad, kind=k, seed=seed)
            getattr(e["owner"], POSITIONS).copy_(new.coords.to(getattr(e["owner"], POSITIONS)))
        self.refresh()
        return info

    def remove(self) -> None:
        """Take the topography off the model: hooks, position buffers and state (same as :func:`detach`)."""
        if not self.attached:
            return
        if self.correlation is not None:
            self.correlation.remove()
        self._hook.remove()
        for e in self.entries:
            if not e["shared"]:
                e["module"]._buffers.pop(POSITIONS, None)
        base = unwrap_compiled(self.model)
        if getattr(base, STATE, None) is self:
            delattr(base, STATE)
        self.attached = False

    @property
    def last(self) -> dict[str, float]:
        return self.correlation.last if self.correlation is not None else {}


def is_attached(model: nn.Module) -> bool:
    """Whether :func:`attach` has put a topography on ``model``."""
    return getattr(unwrap_compiled(model), STATE, None) is not None


def detach(model: nn.Module) -> None:
    """Remove what :func:`attach` added to ``model`` (hooks, ``topo_positions`` buffers); the model's own
    ``state_dict`` keys are left exactly as before. Raises if nothing is attached."""
    topo = getattr(unwrap_compiled(model), STATE, None)
    if topo is None:
        raise ValueError("no topography is attached to this model")
    topo.remove()


def _units_of(mod: nn.Module, units: str, shape: tuple | None = None) -> str:
    """A conv module's units, or any module's whose output is a 2D map ``(N, C, H, W)`` (e.g. a ResNet block,
    TDANN's sheets): ``units``; anything else: its last dimension."""
    conv = isinstance(mod, nn.modules.conv._ConvNd) or (shape is not None and len(shape) == 4)
    return units if conv else "features"


def attach(model: nn.Module, modules: Sequence[str | nn.Module] | dict, *, units: str = "channels",
           layout: Layout | str | dict | None = None, alpha: float | dict = 1.0, smoothness: float = 0.0,
           factor: float = 2.0, mode: str = "exact", kind: str = "relative", radius: float | dict | None = None,
           neighbourhoods: int | None = None, example_input=None, seed: int = 0,
           max_exact_units: int = MAX_EXACT_UNITS, graph=None) -> Topography:
    """Give the output units of ``modules`` positions and return the :class:`Topography` loss.

    Everything is validated (and ``example_input`` run) before the model is touched; on any error the model
    is left as it was. ``detach(model)`` removes it all again. Works on a model compiled with
    ``torch.compile`` (TorchDynamo's caches are reset so that compiled code picks up the hooks).

    Args:
        model: any ``nn.Module``; it is not rewritten (buffers and hooks are added).
        modules: names (paths in ``model.named_modules()``) or modules; or a dict of either → :class:`Layout`.
            Sheets are named by their path everywhere (``topo.last``, ``positions``, ``alpha``).
        units: for conv modules and any module whose output is a 2D map ``(N, C, H, W)`` (a ResNet block):
            ``"channels"`` (channels on a sheet, every location a sample) or ``"locations"`` (every channel ×
            location, retinotopic). Other modules: the output's last dimension. Outputs may be tensors, tuples (the
            first element) or dict-like (the first tensor).
        layout: positions for all modules (a Layout, or ``"grid"``/``"retinotopic"``); default a grid of
            cells (h ≤ w, the most square) or retinotopic for ``units="locations"``.
        alpha: weight of the spatial correlation loss (TopoLM/TDANN) per module, or a dict path → weight
            naming every module; 0 disables it.
        smoothness: weight of the TopoLoss-compatible weight smoothness (channels/Linear units only).
        mode, kind: see :class:`~topotorch.costs.SpatialCorrelationLoss`. ``mode="exact"`` is refused (by
            name, before the model is touched) on a sheet of more than ``max_exact_units`` units; ``"sampled"``
            takes memory O(units + windows) at any size (TDANN's 200k-unit sheets).
        radius: sup-norm radius of the sampled windows (layout units), one for all or a dict per module.
            Default: on a retinotopic sheet (``units="locations"``; a dict names module paths), the radius whose square window holds
            about :data:`WINDOW_UNITS` = 500 units at the sheet's mean density, ``½·√(500·area/n)`` (TDANN's
            neighbourhoods); on every other sheet 2 cells.
        neighbourhoods: windows per sheet per step; default 1 when every sheet is retinotopic (TDANN: one
            neighbourhood per layer per batch), else 5 (TopoLM).
        example_input: a small input batch (a tensor or a tuple of arguments), run once in eval mode under
            ``no_grad`` to learn the number of units; needed for ``units="locations"`` and for modules
            without ``out_features``/``out_channels``.
        graph: a :class:`~topotorch.graph.NeuronGraph` of the same model (BIMT's wiring cost): a module that is a
            weight layer of the graph takes the positions of the neuron layer it writes to, shared, not copied
            (e.g. every block's output projections on a GPT's residual stream, :func:`~topotorch.gpt.gpt_graph`):
            relocation and the spatial loss then see one position per unit, and ``detach`` leaves them in place.
    """
    if units not in ("channels", "locations"):
        raise ValueError(f"units must be 'channels' or 'locations', got {units!r}")
    if mode not in ("exact", "sampled") or kind not in ("relative", "absolute"):
        raise ValueError(f"mode must be 'exact' or 'sampled' and kind 'relative' or 'absolute', got {mode!r}, {kind!r}")
    radii = list(radius.values()) if isinstance(radius, dict) else [radius]
    if (neighbourhoods is not None and (not isinstance(neighbourhoods, int) or neighbourhoods < 1)) or not all(
            r is None or (isinstance(r, (int, float)) and r > 0) for r in radii) or not factor > 0:
        raise ValueError(f"neighbourhoods must be an integer ≥ 1, radius and factor positive; got {neighbourhoods!r}, "
                         f"{radius!r}, {factor!r}")
    base = unwrap_compiled(model)
    if is_attached(base):
        raise ValueError("a topography is already attached to this model; detach(model) first or attach all "
                         "modules in one call")
    resolved = resolve_modules(base, modules)
    if not resolved:
        raise ValueError("no modules given")
    given = dict(zip(resolved, modules.values())) if isinstance(modules, dict) else {n: None for n in resolved}
    owners = {}  # module path → the module that keeps its positions, when shared with a neuron graph's layer
    if graph is not None:
        for name, mod in resolved.items():
            w = next((w for w in graph.weights if w.module is mod), None)
            if w is None:
                raise ValueError(f"{name} is not a weight layer of the graph, so it has no graph positions to share; "
                                 "attach it without graph=, or in a separate call")
            layer = graph.layers[w.dst]
            if layer.owner is None:
                raise ValueError(f"the graph's layer {layer.name!r} keeps its layout outside the model (no owner "
                                 "module): declare it with add_layer(..., owner=module) to share its positions")
            if _units_of(mod, units) == "locations":
                raise ValueError(f"{name}: graph positions are per unit of the weight's first axis; use units='channels'")
            owners[name] = layer.owner
    for name, mod in resolved.items():
        if name not in owners and hasattr(mod, POSITIONS):
            raise ValueError(f"{name} already has unit positions ({POSITIONS}): detach(model) first if attach put "
                             "them there; if a neuron graph did (embed, gpt_graph), pass graph= to share them")
    alpha = check_alpha(alpha, list(resolved))
    if smoothness < 0:
        raise ValueError(f"smoothness must be non-negative, got {smoothness}")
    shapes = {}
    if units == "locations" and example_input is None:
        raise ValueError("units='locations' needs example_input to learn the feature-map sizes")
    if example_input is not None:
        shapes = output_shapes(base, resolved, example_input)
    kinds = {n: _units_of(m, units, shapes.get(n)) for n, m in resolved.items()}
    entries = []
    for i, (name, mod) in enumerate(resolved.items()):
        lay = given[name] if given[name] is not None else layout
        k = kinds[name]
        if k == "locations":
            if len(shapes[name]) != 4:
                raise ValueError(f"units='locations' needs a 2D conv map (N, C, H, W); {name} gives {shapes[name]}")
            _, C, H, W = shapes[name]
            n, default = C * H * W, retinotopic(C, H, W, seed=seed + i)
        else:
            if name in shapes:
                n = shapes[name][1] if k == "channels" else shapes[name][-1]
            else:
                n = getattr(mod, "out_channels" if k == "channels" else "out_features", None)
            if n is None:
                raise ValueError(f"cannot tell how many units {name} ({type(mod).__name__}) has: pass example_input")
            default = _default_layout(n)
        if name in owners:
            if lay is not None:
                raise ValueError(f"{name} shares the graph's positions; it cannot take a layout as well")
            pos = Layout(positions_of(owners[name]).detach().double().cpu(), kind=graph.layers[
                next(w for w in graph.weights if w.module is mod).dst].layout.kind)
        elif isinstance(lay, Layout):
            pos = lay
        elif lay is None:
            pos = default
        elif lay == "grid":
            pos = _default_layout(n)
        elif lay == "retinotopic":
            if default.kind != "retinotopic":
                raise ValueError("layout='retinotopic' needs a Conv2d with units='locations'")
            pos = default
        else:
            raise ValueError(f"unknown layout {lay!r}; use a Layout, 'grid' or 'retinotopic'")
        if pos.n != n:
            raise ValueError(f"layout for {name} has {pos.n} units, the module has {n}")
        entries.append({"name": name, "module": mod, "owner": owners.get(name, mod), "shared": name in owners,
                        "units": k, "kind": pos.kind, "layout": pos})
    weighted = [e["module"] for e in entries if e["units"] != "locations"]
    if smoothness > 0 and weighted:
        WeightSmoothness(weighted, factor)  # validates the blur factor against every sheet
    if isinstance(radius, dict):
        if set(radius) != set(resolved):
            raise ValueError(f"radius names {sorted(radius)}; it must name exactly the modules {list(resolved)}")
    radii = {e["name"]: float(radius[e["name"]] if isinstance(radius, dict) else radius) if radius is not None
             else window_radius(e["layout"]) if e["units"] == "locations" else 2.0 for e in entries}
    if neighbourhoods is None:
        neighbourhoods = 1 if all(e["units"] == "locations" for e in entries) else 5

    # Everything is validated: only now touch the model, and undo it all if anything still fails.
    added = []
    try:
        for e in entries:
            lay = e.pop("layout")
            if not e["shared"]:
                set_positions(e["module"], lay)
                added.append(e["module"])
        topo = Topography(model, entries, alpha, smoothness, factor, mode, kind, radii, neighbourhoods, seed,
                          max_exact_units)
    except BaseException:
        for m in added:
            m._buffers.pop(POSITIONS, None)
        raise
    setattr(base, STATE, topo)
    return topo
