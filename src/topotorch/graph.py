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

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from . import layout as L
from .layout import Layout

__all__ = ["Port", "NeuronLayer", "WeightLayer", "NeuronGraph", "embed", "ELEMENTWISE"]

# Modules that act on each unit separately, so they sit inside a neuron layer without ports.
ELEMENTWISE = (
    nn.ReLU, nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.SELU, nn.CELU, nn.Softsign, nn.Tanhshrink,
)
IN_PERM, OUT_PERM = "topo_in_perm", "topo_out_perm"


@dataclass
class Port:
    """Axis ``dim`` of tensor ``getattr(module, name)`` is indexed by a neuron layer's units."""

    module: nn.Module
    name: str
    dim: int = 0

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.name)


@dataclass
class NeuronLayer:
    """A population of units: its layout and every tensor slice that moves with its units."""

    name: str
    layout: Layout
    ports: list[Port] = field(default_factory=list)
    movable: bool = True  # False: placed and costed, never relocated (e.g. q/k units tied within heads)

    @property
    def n(self) -> int:
        return self.layout.n


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
    def add_layer(self, name: str, layout: Layout, ports: Sequence[Port] = ()) -> int:
        self.layers.append(NeuronLayer(name, layout, list(ports)))
        for p in ports:
            self._check_port(self.layers[-1], p)
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
        t = p.tensor
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"port {p.name!r} of {type(p.module).__name__} is not a tensor")
        if t.dim() <= p.dim or t.shape[p.dim] != layer.n:
            raise ValueError(f"port {p.name!r} has shape {tuple(t.shape)}; axis {p.dim} must have "
                             f"{layer.n} entries for neuron layer {layer.name!r}")

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

    def input_perm(self) -> torch.Tensor | None:
        return getattr(self.model, IN_PERM, None) if self.model is not None else None

    def output_perm(self) -> torch.Tensor | None:
        return getattr(self.model, OUT_PERM, None) if self.model is not None else None

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
        continues as if nothing moved.
        """
        lay = self.layers[i].layout
        sp = torch.as_tensor(slot_perm, dtype=torch.long)
        if sp.shape != (lay.m,) or not torch.equal(sp.sort().values, torch.arange(lay.m)):
            raise ValueError(f"slot_perm must be a permutation of range({lay.m})")
        up = self.unit_perm(i, sp)
        seen = set()
        for port in self.layers[i].ports:
            t = port.tensor
            key = (id(t), port.dim)
            if key in seen:  # the same tensor declared twice must move once
                continue
            seen.add(key)
            idx = up.to(t.device)
            t.data = t.data.index_select(port.dim, idx)
            if optimizer is not None and isinstance(t, nn.Parameter):
                st = optimizer.state.get(t, {})
                for k, v in list(st.items()):
                    if isinstance(v, torch.Tensor) and v.shape == t.shape:
                        st[k] = v.index_select(port.dim, idx)

    # ---- hooks ----------------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach the input/output permutation hooks (the buffers stay in the model)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def state_dict(self) -> dict:
        """JSON-serialisable layout state (the permutations live in the model's state_dict)."""
        return {"layers": [{"name": l.name, "layout": l.layout.to_dict()} for l in self.layers]}

    def load_layouts(self, state: dict) -> None:
        layers = state.get("layers")
        if not isinstance(layers, list) or len(layers) != len(self.layers):
            raise ValueError(f"layout state has {len(layers) if isinstance(layers, list) else 'no'} layers, "
                             f"graph has {len(self.layers)}")
        for l, d in zip(self.layers, layers):
            lay = Layout.from_dict(d["layout"])
            if lay.n != l.n:
                raise ValueError(f"layout for {l.name!r} has {lay.n} units, layer has {l.n}")
            l.layout = lay


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

    # Everything is validated: only now touch the user's model.
    dev = linears[0].weight.device
    model.register_buffer(IN_PERM, torch.arange(sizes[0], device=dev))
    model.register_buffer(OUT_PERM, torch.arange(sizes[-1], device=dev))
    g = NeuronGraph()
    g.model = model
    for name, lay in zip(names, lays):
        g.add_layer(name, lay)
    g.add_port(0, Port(model, IN_PERM, 0))
    cur = 0
    for idx, m in enumerate(model):
        if isinstance(m, nn.Linear):
            g.connect(m, cur, cur + 1, name=f"{idx}")
            cur += 1
        elif isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
            for nm in ("weight", "bias", "running_mean", "running_var"):
                if isinstance(getattr(m, nm, None), torch.Tensor):
                    g.add_port(cur, Port(m, nm, 0))
    g.add_port(len(sizes) - 1, Port(model, OUT_PERM, 0))
    g._hooks.append(model.register_forward_pre_hook(_in_perm_hook))
    g._hooks.append(model.register_forward_hook(_out_perm_hook))
    return g
