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
from .costs.correlation import SpatialCorrelationLoss, correlation_matrix
from .costs.smoothness import WeightSmoothness, sheet_shape
from .layout import Layout

__all__ = ["attach", "Topography", "retinotopic", "POSITIONS"]

POSITIONS = "topo_positions"


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


def _default_layout(n: int) -> Layout:
    h, w = sheet_shape(n)  # row-major h × w cells, the same sheet TopoLoss uses
    return L.grid(h, w, spacing=1.0)


class Topography:
    """Positions and topographic losses attached to a model's modules. Call it for the loss.

    Attributes:
        names: the attached modules' names; ``positions(name)`` their :class:`Layout`.
    """

    def __init__(self, model: nn.Module, entries: list, alpha: float, smoothness: float, factor: float,
                 mode: str, kind: str, radius: float, neighbourhoods: int, seed: int):
        self.model, self.entries = model, entries
        self.alpha, self.smoothness = alpha, smoothness
        self.names = [e["name"] for e in entries]
        self.correlation = SpatialCorrelationLoss(
            [(e["name"], e["module"], self.positions(e["name"]), e["transform"]) for e in entries],
            alpha=alpha, mode=mode, kind=kind, radius=radius, neighbourhoods=neighbourhoods,
            generator=torch.Generator().manual_seed(seed)) if alpha > 0 else None
        weighted = [e["module"] for e in entries if e["units"] != "locations"]
        self.weights = WeightSmoothness(weighted, factor) if smoothness > 0 and weighted else None
        self._hook = model.register_load_state_dict_post_hook(lambda m, keys: self.refresh())

    def positions(self, name: str) -> Layout:
        e = self._entry(name)
        return Layout(getattr(e["module"], POSITIONS).double(), kind=e["kind"])

    def _entry(self, name: str) -> dict:
        for e in self.entries:
            if e["name"] == name:
                return e
        raise KeyError(f"{name!r} is not attached; attached: {self.names}")

    def __call__(self) -> torch.Tensor:
        """α · spatial correlation loss (last forward pass) + smoothness · TopoLoss of the weights."""
        total = None
        if self.correlation is not None:
            total = self.correlation()
        if self.weights is not None:
            w = self.smoothness * self.weights()
            total = w if total is None else total + w
        if total is None:
            raise RuntimeError("no loss is enabled (alpha and smoothness are both 0)")
        return total

    def refresh(self) -> None:
        """Re-read positions from the modules' buffers (after ``load_state_dict``)."""
        if self.correlation is not None:
            for s in self.correlation.sheets:
                s.layout = self.positions(s.name)
            self.correlation.refresh()

    @torch.no_grad()
    def optimize_positions(self, *inputs, windows: int = 50, swaps: int = 50, radius: float | None = None,
                           seed: int = 0) -> dict:
        """TDANN's swap pre-optimisation on the responses to ``inputs``: positions are swapped inside local
        windows when that lowers the spatial loss; the buffers are updated. Returns per-module info."""
        from .relocate import swap_optimize
        got = {}
        hooks = [e["module"].register_forward_hook(
            lambda m, a, o, e=e: got.__setitem__(e["name"], (e["transform"] or (lambda t: t.reshape(-1, t.shape[-1])))(o)))
            for e in self.entries]
        was = self.model.training
        self.model.eval()
        try:
            self.model(*inputs)
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was)
        info = {}
        for e in self.entries:
            lay = self.positions(e["name"])
            r = correlation_matrix(got[e["name"]].float().cpu())
            rad = radius if radius is not None else (2.0 if lay.kind != "retinotopic" else 2.0 * math.sqrt(lay.n) / 8)
            new, info[e["name"]] = swap_optimize(r, lay, windows, swaps, rad, seed=seed)
            getattr(e["module"], POSITIONS).copy_(new.coords.to(getattr(e["module"], POSITIONS)))
        self.refresh()
        return info

    def remove(self) -> None:
        """Detach the hooks (the position buffers stay in the model)."""
        if self.correlation is not None:
            self.correlation.remove()
        self._hook.remove()

    @property
    def last(self) -> dict[str, float]:
        return self.correlation.last if self.correlation is not None else {}


def attach(model: nn.Module, modules: Sequence[str | nn.Module] | dict, *, units: str = "channels",
           layout: Layout | str | dict | None = None, alpha: float = 1.0, smoothness: float = 0.0,
           factor: float = 2.0, mode: str = "exact", kind: str = "relative", radius: float = 2.0,
           neighbourhoods: int = 5, example_input=None, seed: int = 0) -> Topography:
    """Give the output units of ``modules`` positions and return the :class:`Topography` loss.

    Args:
        model: any ``nn.Module``; it is not rewritten (buffers and hooks are added).
        modules: names (``model.get_submodule``) or modules; or a dict name → :class:`Layout`.
        units: for ``nn.Conv2d``: ``"channels"`` (channels on a sheet) or ``"locations"`` (every channel ×
            location, retinotopic; needs ``example_input`` to learn the feature-map size).
        layout: positions for all modules (a Layout, or ``"grid"``/``"retinotopic"``); default a grid of
            cells (h ≤ w, the most square) or retinotopic for ``units="locations"``.
        alpha: weight of the spatial correlation loss (TopoLM/TDANN) per module; 0 disables it.
        smoothness: weight of the TopoLoss-compatible weight smoothness (channels/Linear units only).
        mode, kind, radius, neighbourhoods: see :class:`~topotorch.costs.SpatialCorrelationLoss`.
        example_input: a small input batch, needed for ``units="locations"``.
    """
    if units not in ("channels", "locations"):
        raise ValueError(f"units must be 'channels' or 'locations', got {units!r}")
    given = dict(modules) if isinstance(modules, dict) else {m: None for m in modules}
    named = {id(m): n for n, m in model.named_modules()}
    resolved = []
    for key, lay in given.items():
        if isinstance(key, str):
            try:
                mod, name = model.get_submodule(key), key
            except AttributeError:
                raise ValueError(f"the model has no submodule {key!r}") from None
        else:
            mod, name = key, named.get(id(key))
            if name is None:
                raise ValueError(f"{type(key).__name__} is not a submodule of this model")
        if hasattr(mod, POSITIONS):
            raise ValueError(f"{name} is already attached (it has {POSITIONS})")
        resolved.append((name, mod, lay if lay is not None else layout))
    shapes = {}
    if units == "locations" and example_input is None:
        raise ValueError("units='locations' needs example_input to learn the feature-map sizes")
    if example_input is not None:
        hooks = [m.register_forward_hook(lambda mod, a, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
                 for n, m, _ in resolved]
        with torch.no_grad():
            model(*(example_input if isinstance(example_input, tuple) else (example_input,)))
        for h in hooks:
            h.remove()
    entries = []
    for i, (name, mod, lay) in enumerate(resolved):
        if isinstance(mod, nn.Conv2d):
            C = mod.out_channels
            if units == "locations":
                _, C, H, W = shapes[name]
                n, transform, default = C * H * W, (lambda o: o.flatten(1)), retinotopic(C, H, W, seed=seed + i)
            else:
                n, transform, default = C, (lambda o: o.transpose(1, -1).reshape(-1, o.shape[1])), _default_layout(C)
        else:
            n = shapes[name][-1] if name in shapes else getattr(mod, "out_features", None)
            if n is None:
                raise ValueError(f"cannot tell how many units {name} ({type(mod).__name__}) has: pass example_input")
            transform, default = None, _default_layout(n)
        if isinstance(lay, Layout):
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
        ref = next(iter(mod.parameters()), None)
        mod.register_buffer(POSITIONS, pos.unit_coords.float().to(ref.device if ref is not None else "cpu"))
        entries.append({"name": name, "module": mod, "transform": transform, "kind": pos.kind,
                        "units": units if isinstance(mod, nn.Conv2d) else "features"})
    return Topography(model, entries, alpha, smoothness, factor, mode, kind, radius, neighbourhoods, seed)
