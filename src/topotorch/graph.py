"""The neuron graph: which tensors index which neuron layer.

A :class:`NeuronLayer` is a layout plus its *ports* — every tensor slice indexed by its units (rows of the
incoming weight and bias, columns of the outgoing weight, norm parameters, an input/output permutation
buffer). A :class:`WeightLayer` connects a source layer to a destination layer. Costs, relocation,
metrics and plots all read this graph, so a new model only has to declare its ports once.

``embed(model)`` builds the graph of an ``nn.Sequential`` of ``nn.Linear`` + elementwise layers (and so of
:class:`topotorch.models.MLP`) and attaches input/output permutation buffers with hooks, in the spirit of
``torch.nn.utils.prune``: the user's module keeps its class and its code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import layout as L
from .hooks import first_tensor
from .layout import Layout

__all__ = ["Port", "NeuronLayer", "WeightLayer", "NeuronGraph", "embed", "from_state_dict", "WeightsOnly", "ELEMENTWISE"]

# Modules that act on each unit separately, so they sit inside a neuron layer without ports.
ELEMENTWISE = (
    nn.ReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.SELU, nn.CELU, nn.Softsign, nn.Tanhshrink,
)
IN_PERM, OUT_PERM = "topo_in_perm", "topo_out_perm"


@dataclass
class Port:
    """Axis ``dim`` of parameter or buffer ``module.<name>`` is indexed by a neuron layer's units.

    ``perm=True`` marks a *permutation port*: a long buffer holding a permutation of ``range(n)`` through
    which the model reads its input (``x[..., perm]``) or writes its output (``y[..., argsort(perm)]``), as
    :func:`embed` does. It is what lets a boundary layer (the model's inputs or outputs) move.
    A weight under ``torch.nn.utils.parametrize`` is moved through its original tensor.
    """

    module: nn.Module
    name: str
    dim: int = 0
    perm: bool = False

    @property
    def tensor(self) -> torch.Tensor:
        """The tensor as the model uses it (a parametrized weight: its computed value)."""
        return getattr(self.module, self.name)

    @property
    def parametrized(self) -> bool:
        return parametrize.is_parametrized(self.module, self.name)

    @property
    def storage(self) -> torch.Tensor:
        """The tensor that holds the state: the parameter or buffer itself, or a parametrization's original."""
        if self.parametrized:
            return self.module.parametrizations[self.name].original
        return getattr(self.module, self.name)


class NeuronLayer:
    """A population of units: its layout and every tensor slice that moves with its units.

    With an ``owner`` module the layout is not kept here: the positions live on the owner as its
    :data:`~topotorch.layout.POSITIONS` buffer (``(n, dim)``, saved with ``state_dict``), and :attr:`layout` reads
    them, so loading a state dict restores them and a topography attached to the same units shares them.
    """

    def __init__(self, name: str, layout: Layout, ports: Sequence[Port] = (), movable: bool | None = None,
                 owner: nn.Module | None = None):
        self.name = name
        self.ports: list[Port] = list(ports)
        # True/False: decided by hand (False: placed and costed, never relocated, e.g. q/k units tied within
        # heads). None: movable when closed — fed by a weight layer or a permutation port, and read by one.
        self.movable = movable
        self.owner = owner
        self.fold, self.kind = layout.fold, layout.kind
        self._layout = layout if owner is None else None
        self._seen = None  # (buffer id, version) the cached layout was read from

    @property
    def layout(self) -> Layout:
        if self.owner is None:
            return self._layout
        pos = L.positions_of(self.owner)
        if pos is None:
            raise ValueError(f"layer {self.name!r}: its positions buffer ({L.POSITIONS}) was removed from "
                             f"{type(self.owner).__name__}")
        key = (id(pos), pos._version)
        if key != self._seen:
            c = pos.detach().double().cpu()
            if pos.dtype != torch.float64 and self._layout is not None and any(
                    torch.equal(pos.detach().cpu(), self._layout.unit_coords.to(d).to(pos.dtype))
                    for d in (pos.dtype, torch.float32, torch.bfloat16, torch.float16)):
                # the model was cast (model.half(), then .float() …): the same positions, rounded; keep them exact
                self._seen = key
                return self._layout
            m = c.shape[0] // self.fold
            if c.shape[0] % self.fold or not torch.equal(c, c[:m].repeat(self.fold, 1)):
                raise ValueError(f"layer {self.name!r} has fold {self.fold}, but the {c.shape[0]} positions on "
                                 f"{type(self.owner).__name__} do not repeat {self.fold} times (they were moved unit by "
                                 "unit); its units must share slots group by group")
            self._layout, self._seen = Layout(c[:m], fold=self.fold, kind=self.kind), key
        return self._layout

    @property
    def n(self) -> int:
        return self.layout.n

    def __repr__(self) -> str:
        return f"NeuronLayer({self.name!r}, n={self.n}, owner={type(self.owner).__name__ if self.owner is not None else None})"


@dataclass
class WeightLayer:
    """``module.<weight>`` of shape ``(dst.n, src.n, *kernel)`` and an optional bias of shape ``(dst.n,)``."""

    module: nn.Module
    src: int
    dst: int
    weight_name: str = "weight"
    bias_name: str | None = "bias"
    name: str = ""

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.weight_name)

    @property
    def bias(self) -> torch.Tensor | None:
        if self.bias_name is None:
            return None
        return getattr(self.module, self.bias_name, None)


class NeuronGraph:
    """Ordered neuron layers and the weight layers between them.

    Declare by hand for any model::

        g = NeuronGraph()
        a = g.add_layer("in", layout.line(4), [Port(model, "in_perm")])
        b = g.add_layer("hidden", layout.line(20))
        g.connect(model.fc1, a, b)      # adds rows/bias of fc1 to b's ports, columns to a's
    """

    def __init__(self, layers: Sequence[NeuronLayer] = (), weights: Sequence[WeightLayer] = ()):
        self.layers: list[NeuronLayer] = list(layers)
        self.weights: list[WeightLayer] = []
        self.model: nn.Module | None = None
        self._hooks: list = []
        for w in weights:
            self._add_weight(w)

    # ---- building ------------------------------------------------------------------------------
    def add_layer(self, name: str, layout: Layout | None, ports: Sequence[Port] = (), movable: bool | None = None,
                  owner: nn.Module | None = None) -> int:
        """Add a neuron layer; returns its index. ``movable=None`` (default): it may be relocated when
        closed (see :meth:`is_movable`); ``False`` fixes it; ``True`` asks for it (``permute`` still refuses
        a layer it cannot move exactly).

        ``owner``: the module whose output units these are (or, for a model's inputs, the module that reads them);
        the positions are kept on it as its :data:`~topotorch.layout.POSITIONS` buffer. If it already has positions
        (a topography attached to it, or a model being rebuilt before ``load_state_dict``), ``layout=None`` shares
        them; a ``layout`` that differs from them is refused. Relocation moves units between fixed positions,
        so the buffer is not a port.
        """
        if any(l.name == name for l in self.layers):
            raise ValueError(f"the graph already has a neuron layer named {name!r}")
        have = L.positions_of(owner) if owner is not None else None
        if layout is None:
            if have is None:
                raise ValueError(f"layer {name!r}: layout=None shares the owner's positions, but "
                                 f"{type(owner).__name__ if owner is not None else 'no owner'} has none")
            c = have.detach().double().cpu()
            layout = Layout(c, kind="line" if c.shape[1] == 1 else "explicit")
        elif have is not None and not (have.shape == (layout.n, layout.dim)
                                       and torch.equal(have.detach().double().cpu(), layout.unit_coords)):
            raise ValueError(f"layer {name!r}: {type(owner).__name__} already has other positions "
                             f"{tuple(have.shape)}; pass layout=None to share them, or detach what put them there")
        layer = NeuronLayer(name, layout, [], movable)
        for p in ports:
            self._check_port(layer, p)
        layer.ports = list(ports)
        if owner is not None:
            if have is None:
                L.set_positions(owner, layout, dtype=torch.float64)
            layer.owner, layer._layout = owner, None
        self.layers.append(layer)
        return len(self.layers) - 1

    def connect(self, module: nn.Module, src: int, dst: int, weight_name: str = "weight",
                bias_name: str | None = "bias", name: str = "") -> WeightLayer:
        """Register ``module.weight`` (dst × src × …) as a weight layer and add its ports."""
        w = WeightLayer(module, src, dst, weight_name, bias_name if getattr(module, bias_name or "", None) is not None else None, name)
        self._add_weight(w)
        self.add_port(dst, Port(module, weight_name, 0))
        if w.bias_name is not None:
            self.add_port(dst, Port(module, w.bias_name, 0))
        self.add_port(src, Port(module, weight_name, 1))
        return w

    def add_port(self, layer: int, port: Port) -> None:
        self._check_port(self.layers[layer], port)
        self.layers[layer].ports.append(port)

    def _add_weight(self, w: WeightLayer) -> None:
        for idx in (w.src, w.dst):
            if not 0 <= idx < len(self.layers):
                raise ValueError(f"weight layer refers to neuron layer {idx}, graph has {len(self.layers)}")
        if w.src == w.dst:
            raise ValueError("a weight layer must connect two different neuron layers")
        shape = tuple(w.weight.shape)
        want = (self.layers[w.dst].n, self.layers[w.src].n)
        if len(shape) < 2 or shape[:2] != want:
            raise ValueError(f"weight {w.name or type(w.module).__name__} has shape {shape}, but its layouts "
                             f"need (dst={want[0]}, src={want[1]}, ...)")
        if w.bias is not None and tuple(w.bias.shape) != (want[0],):
            raise ValueError(f"bias of {w.name} has shape {tuple(w.bias.shape)}, expected ({want[0]},)")
        self.weights.append(w)

    @staticmethod
    def _check_port(layer: NeuronLayer, p: Port) -> None:
        where = f"port {p.name!r} of {type(p.module).__name__} (layer {layer.name!r})"
        if not (p.parametrized or p.name in p.module._parameters or p.name in p.module._buffers):
            raise ValueError(f"{where} is not a parameter or buffer of its module: a plain attribute is neither "
                             "saved with the model nor can it be moved reliably; register it with register_buffer")
        t, st = p.tensor, p.storage
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{where} is not a tensor")
        if t.dim() <= p.dim or t.shape[p.dim] != layer.n:
            raise ValueError(f"{where} has shape {tuple(t.shape)}; axis {p.dim} must have "
                             f"{layer.n} entries")
        if st.shape != t.shape:
            raise ValueError(f"{where} is parametrized with an original of another shape {tuple(st.shape)}; its "
                             "units cannot be moved through it")
        if p.perm:
            if t.dim() != 1 or t.dtype != torch.long or not torch.equal(t.sort().values.cpu(), torch.arange(layer.n)):
                raise ValueError(f"{where}: a permutation port must be a long buffer holding a permutation of "
                                 f"range({layer.n})")

    # ---- queries ------------------------------------------------------------------------------
    def incoming(self, i: int) -> list[WeightLayer]:
        return [w for w in self.weights if w.dst == i]

    def outgoing(self, i: int) -> list[WeightLayer]:
        return [w for w in self.weights if w.src == i]

    @property
    def shape(self) -> list[int]:
        return [l.n for l in self.layers]

    def layouts(self) -> list[Layout]:
        return [l.layout for l in self.layers]

    def perm_port(self, i: int) -> Port | None:
        """The permutation port of layer ``i``, if it has one."""
        return next((p for p in self.layers[i].ports if p.perm), None)

    def input_perm(self) -> torch.Tensor | None:
        """``perm[s]``: the model input read at slot ``s`` of the first layer (``None``: never moved)."""
        p = self.perm_port(0) if self.layers else None
        return p.tensor if p is not None else None

    def output_perm(self) -> torch.Tensor | None:
        """``perm[s]``: the model output written from slot ``s`` of the last layer (``None``: never moved)."""
        p = self.perm_port(len(self.layers) - 1) if self.layers else None
        return p.tensor if p is not None else None

    def closure(self, i: int) -> str | None:
        """Why layer ``i`` cannot be relocated exactly (``None``: it can). A layer is closed when what feeds
        it (a weight layer, or a permutation port for the model's inputs) and what reads it (a weight
        layer, or a permutation port for the model's outputs) are all declared."""
        layer = self.layers[i]
        has_perm = any(p.perm for p in layer.ports)
        if not (self.incoming(i) or has_perm):
            return (f"layer {layer.name!r} holds the model's inputs (no weight layer feeds it) and has no "
                    "permutation port: moving it would feed inputs to the wrong units. Declare one with "
                    f"add_port({i}, Port(module, '<perm buffer>', perm=True)) and apply it to the input, or "
                    "keep the layer fixed (add_layer(..., movable=False))")
        if not (self.outgoing(i) or has_perm):
            return (f"layer {layer.name!r} holds the model's outputs (no weight layer reads it) and has no "
                    "permutation port: moving it would reorder the outputs. Declare one with "
                    f"add_port({i}, Port(module, '<perm buffer>', perm=True)) and apply it to the output, or "
                    "keep the layer fixed (add_layer(..., movable=False))")
        return None

    def is_movable(self, i: int) -> bool:
        """Whether relocation may move layer ``i``: as set by hand, else when it is closed."""
        m = self.layers[i].movable
        return self.closure(i) is None if m is None else bool(m)

    # ---- moving units --------------------------------------------------------------------------
    def unit_perm(self, i: int, slot_perm: torch.Tensor) -> torch.Tensor:
        """Expand a slot permutation (length m) of layer ``i`` to all of its ``fold·m`` units."""
        lay = self.layers[i].layout
        sp = torch.as_tensor(slot_perm, dtype=torch.long)
        return (torch.arange(lay.fold)[:, None] * lay.m + sp[None, :]).flatten()

    @torch.no_grad()
    def permute(self, i: int, slot_perm, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Move units of layer ``i``: the unit now in slot ``s`` is the one that was in ``slot_perm[s]``.

        Every port (and, if given, the optimizer's per-parameter state of the same shape, e.g. Adam's
        moments) is permuted the same way, so the model computes exactly the same function and training
        continues as if nothing moved. What cannot be kept exact is refused with a ``ValueError`` that names
        the layer and what is missing, and the model is left as it was: a fixed layer, a boundary layer
        without a permutation port, a parametrization that does not commute with the permutation.
        """
        layer = self.layers[i]
        lay = layer.layout
        sp = torch.as_tensor(slot_perm, dtype=torch.long)
        if sp.shape != (lay.m,) or not torch.equal(sp.sort().values, torch.arange(lay.m)):
            raise ValueError(f"slot_perm must be a permutation of range({lay.m})")
        if layer.movable is False:
            raise ValueError(f"layer {layer.name!r} is fixed (movable=False)")
        why = self.closure(i)
        if why is not None:
            raise ValueError(why)
        up = self.unit_perm(i, sp)
        ports, seen = [], set()
        for port in layer.ports:
            key = (id(port.storage), port.dim)
            if key not in seen:  # the same tensor declared twice (tied weights) must move once
                seen.add(key)
                ports.append(port)
        # Parametrized weights are moved through their original; the computed weight must move with it.
        checks = [(p, p.tensor.detach().index_select(p.dim, up.to(p.tensor.device))) for p in ports if p.parametrized]
        for port in ports:
            t = port.storage
            t.copy_(t.index_select(port.dim, up.to(t.device)))
        bad = [p for p, want in checks if not torch.equal(p.tensor, want)]
        if bad:
            inv = torch.argsort(up)
            for port in ports:
                t = port.storage
                t.copy_(t.index_select(port.dim, inv.to(t.device)))
            p = bad[0]
            kinds = [type(m).__name__ for m in p.module.parametrizations[p.name]]
            raise ValueError(f"layer {layer.name!r}: the parametrization {kinds} of {type(p.module).__name__}."
                             f"{p.name} does not commute with moving units (e.g. a locality prior fixed to "
                             "positions), so relocation would change the model's function; nothing was moved. "
                             "Keep this layer fixed (movable=False) or remove the parametrization")
        if optimizer is not None:
            for port in ports:
                t = port.storage
                st = optimizer.state.get(t, {}) if isinstance(t, nn.Parameter) else {}
                for v in list(st.values()):
                    if isinstance(v, torch.Tensor) and v.shape == t.shape:  # in place: the state may be a view
                        v.copy_(v.index_select(port.dim, up.to(v.device)))

    @torch.no_grad()
    def verify(self, *inputs, model: nn.Module | None = None, rtol: float = 1e-5, seed: int = 0) -> None:
        """Check that moving each movable layer keeps the model's output on ``inputs``; raise otherwise.

        The graph's rule (a closed layer, declared ports) cannot see a tensor indexed by a layer's units that
        was never declared (a skip connection, an undeclared norm layer). This moves every movable layer by a
        random permutation, runs the model, and moves it back exactly; a layer whose move changed the output
        is named in the ``ValueError`` (declare the missing port, or ``movable=False``). The model is left
        exactly as it was. ``model`` defaults to the one :func:`embed` recorded.
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("verify needs the model: pass model=...")
        was = model.training
        model.eval()
        try:
            ref = first_tensor(model(*inputs)).detach().clone()
            scale = max(1.0, float(ref.abs().max()))
            g = torch.Generator().manual_seed(seed)
            bad = []
            for i, layer in enumerate(self.layers):
                if not self.is_movable(i) or layer.layout.m < 2:
                    continue
                sp = torch.randperm(layer.layout.m, generator=g)
                self.permute(i, sp)
                try:
                    dev = float((first_tensor(model(*inputs)) - ref).abs().max())
                finally:
                    self.permute(i, torch.argsort(sp))
                if not dev <= rtol * scale:
                    bad.append(f"{layer.name!r} (|Δoutput| up to {dev:.3g})")
        finally:
            model.train(was)
        if bad:
            raise ValueError(f"moving layer(s) {', '.join(bad)} changes the model's output: a tensor indexed by "
                             "their units is not declared (e.g. a skip connection or a norm layer). Declare it "
                             "with add_port, or fix the layer with movable=False")

    # ---- hooks ----------------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach the input/output permutation hooks (the buffers stay in the model)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def state_dict(self) -> dict:
        """JSON-serialisable layout state (the permutations live in the model's state_dict)."""
        return {"layers": [{"name": l.name, "layout": l.layout.to_dict()} for l in self.layers]}


def _in_perm_hook(module, args):
    x = args[0]
    return (x.index_select(-1, getattr(module, IN_PERM)),) + tuple(args[1:])


def _out_perm_hook(module, args, out):
    perm = getattr(module, OUT_PERM)
    return out.index_select(-1, torch.argsort(perm))


LayoutSpec = Layout | str | Callable[[int], Layout]


def _make_layout(spec: LayoutSpec, n: int, fold: int = 1) -> Layout:
    if isinstance(spec, Layout):
        if spec.n != n:
            raise ValueError(f"layout has {spec.n} units, layer has {n}")
        return spec
    if callable(spec):
        return _make_layout(spec(n), n)
    if spec == "line":
        return L.line(n, fold)
    if spec == "grid":
        return L.square_grid(n, fold)
    raise ValueError(f"unknown layout spec {spec!r}; use 'line', 'grid', a Layout or a callable")


def embed(model: nn.Sequential, layouts: LayoutSpec | Sequence[LayoutSpec] = "line",
          in_fold: int = 1, out_fold: int = 1) -> NeuronGraph:
    """Give every neuron of an ``nn.Sequential`` MLP a position and return its :class:`NeuronGraph`.

    The model gets two buffers, ``topo_in_perm`` and ``topo_out_perm`` (saved in its state_dict), and
    hooks that apply them, so relocating input/output neurons never changes what the model computes.

    Args:
        model: ``nn.Sequential`` of ``nn.Linear`` and elementwise modules (activations, dropout,
            ``BatchNorm1d``/``LayerNorm``, whose parameters become ports of their neuron layer).
        layouts: one spec for all neuron layers or one per layer: a :class:`Layout`, ``"line"``,
            ``"grid"`` or ``callable(n) -> Layout``.
        in_fold / out_fold: folds of the input and output layers (BIMT's in_fold/out_fold).
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"embed() builds graphs of nn.Sequential models; for {type(model).__name__} "
                        "declare the graph by hand with NeuronGraph.add_layer/connect")
    if hasattr(model, IN_PERM):
        raise ValueError("this model is already embedded (it has topo_in_perm); reuse its graph")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer")
    for m in model:
        if not isinstance(m, (nn.Linear, nn.BatchNorm1d, nn.LayerNorm) + ELEMENTWISE):
            raise ValueError(f"embed() cannot place units through {type(m).__name__}: only nn.Linear and "
                             "elementwise modules are supported; declare the graph by hand")
    sizes = [linears[0].in_features] + [m.out_features for m in linears]
    for k, (a, b) in enumerate(zip(linears, linears[1:])):
        if b.in_features != a.out_features:
            raise ValueError(f"linear layer {k + 1} expects {b.in_features} inputs but the previous layer has "
                             f"{a.out_features} units")
    specs = list(layouts) if isinstance(layouts, (list, tuple)) else [layouts] * len(sizes)
    if len(specs) != len(sizes):
        raise ValueError(f"got {len(specs)} layouts for {len(sizes)} neuron layers {sizes}")
    folds = [in_fold] + [1] * (len(sizes) - 2) + [out_fold]
    names = ["input"] + [f"hidden{i}" for i in range(1, len(sizes) - 1)] + ["output"]
    lays = [_make_layout(spec, n, f) for n, spec, f in zip(sizes, specs, folds)]
    for m in model:
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
            raise ValueError(f"LayerNorm over {tuple(m.normalized_shape)} is not per-unit")
    owners = [model] + linears  # the input layer's positions live on the model, every other layer's on its Linear
    for o, lay in zip(owners, lays):
        have = L.positions_of(o)
        if have is not None and not torch.equal(have.detach().double().cpu(), lay.unit_coords):
            raise ValueError(f"{type(o).__name__} already has other unit positions ({L.POSITIONS}); detach what put "
                             "them there, or embed a fresh model")

    # Everything is validated: only now touch the user's model.
    dev = linears[0].weight.device
    model.register_buffer(IN_PERM, torch.arange(sizes[0], device=dev))
    model.register_buffer(OUT_PERM, torch.arange(sizes[-1], device=dev))
    g = NeuronGraph()
    g.model = model
    for name, lay, o in zip(names, lays, owners):
        g.add_layer(name, lay, owner=o)
    g.add_port(0, Port(model, IN_PERM, 0, perm=True))
    cur = 0
    for idx, m in enumerate(model):
        if isinstance(m, nn.Linear):
            g.connect(m, cur, cur + 1, name=f"{idx}")
            cur += 1
        elif isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
            for nm in ("weight", "bias", "running_mean", "running_var"):
                if isinstance(getattr(m, nm, None), torch.Tensor):
                    g.add_port(cur, Port(m, nm, 0))
    g.add_port(len(sizes) - 1, Port(model, OUT_PERM, 0, perm=True))
    g._hooks.append(model.register_forward_pre_hook(_in_perm_hook))
    g._hooks.append(model.register_forward_hook(_out_perm_hook))
    return g


class WeightsOnly(nn.Sequential):
    """The ``nn.Linear`` layers of an embedded MLP rebuilt from its state dict (:func:`from_state_dict`).

    It holds the weights, the permutations and the positions, so it can be drawn, measured and relocated; it
    does not hold the activations (a state dict has none), so calling it raises instead of computing a different
    function. To run the network, build its model and ``load_state_dict``."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("a network rebuilt from a state dict has its weights and positions but not its activations; "
                           "draw, measure or relocate it, and to run it build the model and load the state dict")


def _slots(coords: torch.Tensor, kind: str) -> Layout:
    """The layout of ``(n, dim)`` unit positions: the smallest fold whose slots repeat to give them."""
    n = coords.shape[0]
    for fold in range(1, n + 1):
        if n % fold == 0 and torch.equal(coords, coords[: n // fold].repeat(fold, 1)):
            if torch.unique(coords[: n // fold], dim=0).shape[0] == n // fold:
                return Layout(coords[: n // fold], fold=fold, kind=kind)
    return Layout(coords, kind=kind)


def from_state_dict(state: dict) -> NeuronGraph:
    """The :class:`NeuronGraph` of an MLP embedded with :func:`embed`, from its saved ``state_dict`` alone.

    Every position lives in the state dict (the input layer's on the model, every other layer's on its Linear), so
    a BIMT run's ``model.safetensors`` is enough to draw (:func:`topotorch.plot.draw_network`), measure
    (:mod:`topotorch.metrics`) and relocate the network. The graph's ``model`` is a :class:`WeightsOnly` skeleton.
    A token model's MLP (keys under ``mlp.``) is found by its ``topo_in_perm`` entry. A fold (several input
    groups on the same slots, BIMT's ``in_fold``) is read from positions that repeat.
    """
    prefixes = [k[: -len(IN_PERM)] for k in state if k.endswith(IN_PERM)]
    if len(prefixes) != 1:
        raise ValueError(f"the state dict holds {len(prefixes)} embedded networks ({IN_PERM} entries); "
                         "from_state_dict reads exactly one (a model built with topotorch.embed)")
    pre = prefixes[0]
    linear = {}
    for k, v in state.items():
        rest = k[len(pre):]
        if k.startswith(pre) and rest.endswith(".weight") and rest[:-7].isdigit() and v.dim() == 2:
            linear[int(rest[:-7])] = v
    if not linear:
        raise ValueError(f"no Linear weights ('{pre}<index>.weight') in the state dict")
    order = sorted(linear)
    mods: list[nn.Module] = []
    for i in range(order[-1] + 1):
        if i in linear:
            out_f, in_f = linear[i].shape
            mods.append(nn.Linear(in_f, out_f, bias=f"{pre}{i}.bias" in state, dtype=linear[i].dtype))
        else:
            mods.append(nn.Identity())
    missing = [f"{pre}{L.POSITIONS}"] + [f"{pre}{i}.{L.POSITIONS}" for i in order]
    missing = [k for k in missing if k not in state]
    if missing:
        raise ValueError(f"the state dict has no positions for {missing[:3]}: it was saved before neuron graphs kept "
                         "their layouts on the model; rebuild the model from its config.json instead")
    coords = [state[f"{pre}{L.POSITIONS}"]] + [state[f"{pre}{i}.{L.POSITIONS}"] for i in order]
    lays = [_slots(c.double().cpu(), "line" if c.shape[1] == 1 else "explicit") for c in coords]
    model = WeightsOnly(*mods)
    g = embed(model, lays, in_fold=lays[0].fold, out_fold=lays[-1].fold)
    own = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
    model.load_state_dict({k: v for k, v in own.items() if k in model.state_dict()}, strict=True)
    return g
