"""Activations of any module, as ``(samples, units)``: the one place outputs are read and recorded.

Every cost, analysis and recipe that needs activations goes through :func:`as_units` (what a module's
output means as units) and :func:`record` (a context manager whose hooks are always removed).

A module's output may be a tensor, a tuple/list (HuggingFace blocks return ``(hidden, …)``) or a dict-like
``ModelOutput``; the units are read from its first tensor. Units per kind:

- ``"features"``: the last dimension (``nn.Linear``, attention/MLP blocks); every other dimension is a sample.
- ``"channels"``: dimension 1 of a conv map ``(N, C, *spatial)``; every location is a sample.
- ``"locations"``: every channel × location of a conv map (``output.flatten(1)``); each image is a sample.
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

__all__ = ["UNITS", "first_tensor", "as_units", "record", "resolve_modules", "output_shapes"]

UNITS = ("features", "channels", "locations")


def first_tensor(out) -> torch.Tensor:
    """The tensor a module's output stands for: itself, the first element of a tuple/list, or the first
    tensor value of a dict-like output (``ModelOutput``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    if isinstance(out, Mapping):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(f"cannot read units from a module output of type {type(out).__name__}: expected a tensor, "
                    "a tuple/list starting with one, or a dict-like output holding one")


def as_units(out, units: str = "features") -> torch.Tensor:
    """A module's output as ``(samples, units)`` (see the module docstring for ``units``)."""
    t = first_tensor(out)
    if units == "features":
        return t.reshape(-1, t.shape[-1]) if t.dim() != 1 else t[None]
    if t.dim() < 3:
        raise ValueError(f"units={units!r} needs a conv feature map (N, C, H, W…), got shape {tuple(t.shape)}")
    if units == "channels":
        return t.movedim(1, -1).reshape(-1, t.shape[1])
    if units == "locations":
        return t.flatten(1)
    raise ValueError(f"units must be one of {UNITS}, got {units!r}")


def resolve_modules(model: nn.Module, modules) -> dict[str, nn.Module]:
    """``{path in model.named_modules(): module}`` for names, modules, or a mapping whose keys are either."""
    named = {id(m): n for n, m in model.named_modules()}
    out: dict[str, nn.Module] = {}
    for key in (modules.keys() if isinstance(modules, Mapping) else modules):
        if isinstance(key, str):
            try:
                mod = model.get_submodule(key)
            except AttributeError:
                raise ValueError(f"the model has no submodule {key!r}") from None
            name = key
        elif isinstance(key, nn.Module):
            name = named.get(id(key))
            if name is None:
                raise ValueError(f"{type(key).__name__} is not a submodule of this model")
            mod = key
        else:
            raise TypeError(f"modules are given by name or as nn.Module, got {type(key).__name__}")
        if name in out:
            raise ValueError(f"{name or '<the model itself>'} is given twice")
        out[name] = mod
    return out


@contextmanager
def record(modules: Mapping[str, nn.Module] | Sequence[nn.Module], units: str | Mapping[str, str] = "features",
           detach: bool = True, device: str | torch.device | None = None) -> Iterator[dict[str, list]]:
    """Record the outputs of ``modules`` during the ``with`` block: ``{name: [(samples, units), …]}``, one
    entry per forward pass. Hooks are removed on exit, also when the block raises.

    ``modules`` is a mapping name → module (a list is named ``"0"``, ``"1"``, …); ``units`` one kind for
    all or one per name (``None``: the output's first tensor as it is); ``device`` moves each recording (e.g.
    ``"cpu"`` to free accelerator memory).
    """
    mods = dict(modules) if isinstance(modules, Mapping) else {str(i): m for i, m in enumerate(modules)}
    kinds = {n: (units[n] if isinstance(units, Mapping) else units) for n in mods}
    for n, k in kinds.items():
        if k is not None and k not in UNITS:
            raise ValueError(f"units of {n} must be one of {UNITS}, got {k!r}")
    got: dict[str, list] = {n: [] for n in mods}

    def hook_for(name):
        def hook(module, args, out):
            x = first_tensor(out) if kinds[name] is None else as_units(out, kinds[name])
            if detach:
                x = x.detach()
            got[name].append(x if device is None else x.to(device))
        return hook

    handles = []
    try:
        for n, m in mods.items():
            handles.append(m.register_forward_hook(hook_for(n)))
        yield got
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def output_shapes(model: nn.Module, modules: Mapping[str, nn.Module], example_input) -> dict[str, tuple]:
    """The shape of each module's output (its first tensor) in one forward pass of ``example_input`` (a tensor or a
    tuple of arguments), run in eval mode under ``no_grad`` (no running-statistics updates) with the mode restored.
    A module that does not run raises naming it."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was = model.training
    model.eval()
    try:
        with record(modules, None) as got:
            model(*args)
    finally:
        model.train(was)
    for n in modules:
        if not got[n]:
            raise ValueError(f"{n} did not run in the forward pass of example_input")
    return {n: tuple(got[n][0].shape) for n in modules}


def _mean_rest(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).mean(-1) if t.dim() > 2 else t


REDUCE = {
    "features": lambda t: t.reshape(t.shape[0], -1, t.shape[-1]).mean(1) if t.dim() > 2 else t,
    "channels": _mean_rest,          # a channel's response to an input: its mean over locations
    "locations": lambda t: t.flatten(1),
}


@torch.no_grad()
def responses(model: nn.Module, modules: Mapping[str, nn.Module], batches, units: str | Mapping[str, str] = "features",
              reduce=None) -> dict[str, torch.Tensor]:
    """Each module's response to every input, ``{name: (inputs, units) float32 on the CPU}``.

    ``batches`` is an iterable of model inputs (a tensor, a tuple of arguments or a dict of keyword arguments),
    each moved to the model's device. One row per input: ``units`` says how a module's output becomes units
    (``"features"``: the last dimension, averaged over any token/location dimensions; ``"channels"``: averaged
    over locations; ``"locations"``: every channel × location); ``reduce(name, output, batch_index)`` replaces
    that (e.g. a masked mean over tokens). Runs in eval mode under ``no_grad`` and restores the mode, also
    when the forward raises; the model is not changed."""
    mods = dict(modules)
    kinds = {n: (units[n] if isinstance(units, Mapping) else units) for n in mods}
    for n, k in kinds.items():
        if k not in UNITS:
            raise ValueError(f"units of {n} must be one of {UNITS}, got {k!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else None

    def move(v):  # floating inputs in the model's dtype (a model moved to float64 or bfloat16 reads [0, 1] images too)
        if not isinstance(v, torch.Tensor):
            return v
        return v.to(device, dtype) if dtype is not None and v.is_floating_point() else v.to(device)
    out: dict[str, list] = {n: [] for n in mods}
    was = model.training
    model.eval()
    try:
        with record(mods, None) as got:
            for b, inp in enumerate(batches):
                for v in got.values():
                    v.clear()
                if isinstance(inp, Mapping):
                    model(**{k: move(v) for k, v in inp.items()})
                elif isinstance(inp, tuple):
                    model(*[move(v) for v in inp])
                else:
                    model(move(inp))
                for n in mods:
                    if len(got[n]) != 1:
                        raise ValueError(f"{n} ran {len(got[n])} times in one forward pass; probe a module that "
                                         "runs once per input")
                    t = got[n][0]
                    r = reduce(n, t, b) if reduce is not None else REDUCE[kinds[n]](t)
                    out[n].append(r.float().cpu())
    finally:
        model.train(was)
    return {n: torch.cat(v) if v else torch.empty(0) for n, v in out.items()}


__all__ += ["responses"]


# ---- compiled and wrapped models: the module the hooks go on ------------------------------------------

def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module a wrapper stands for: ``torch.compile``'s ``OptimizedModule``, ``DistributedDataParallel``
    or ``DataParallel`` (nested too); other modules unchanged."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _dynamo_used() -> bool:
    """Whether TorchDynamo has compiled anything in this process (hooks added now would be skipped by it)."""
    import sys
    dyn = sys.modules.get("torch._dynamo.eval_frame")
    if dyn is None:
        return False
    try:
        from torch._dynamo.utils import counters
        return bool(counters["stats"].get("unique_graphs", 0)) or bool(counters["frames"].get("ok", 0))
    except Exception:  # private API: when unsure, treat compiled code as possibly present
        return True


def _reset_dynamo() -> None:
    import torch._dynamo
    torch._dynamo.reset()


__all__ += ["unwrap_compiled"]
