"""Replicas: ``S`` independent seeds of one small model trained as one batched program.

Small networks (BIMT's [4, 20, 20, 2] MLP on 100 points) are bound by the per-operation overhead of eager
PyTorch, not by arithmetic, so ``S`` seeds stacked into batched tensors (``(S, out, in)`` weights, one
``baddbmm`` per layer) cost little more than one. Everything per seed stays per seed:

- each replica keeps its own ``nn.Sequential`` and :class:`~topotorch.graph.NeuronGraph`, whose parameters and
  permutation buffers are *aliases* of its slice of the stacked tensors, so BIMT's relocation
  (:func:`~topotorch.relocate.relocate`) moves a replica's units, exactly function-preserving, by writing into the
  stack — and its Adam moments through :class:`ReplicaOptimizer`;
- the wiring-cost gradient is added to the stacked gradients in one operation per layer (every replica has the
  same layouts, so the same distance factors);
- losses, test figures, logs and costs are per replica;
- token models (:class:`StackedTokenMLP`) stack each replica's embedding too, with its own L1 term;
- :class:`StackedModule` stacks every ``nn.Linear`` of any model whose other modules hold no state (a small
  transformer: the replicas' batches pass one after another through its attention) — bit-identical to single
  runs on BIMT's in-context transformer.

Elementwise steps (AdamW, the penalty, relocation) are the same arithmetic as a single run; the forward and backward
pass go through batched matrix products, whose summation order may differ from ``nn.Linear``'s in the last bits.
A replica therefore equals the single run of its seed to floating-point tolerance: weights within 5e-4 over a few
hundred steps with relocation (``tests/test_replicas.py``), and the BIMT MLP rows hold on the same seeds. Long runs
drift apart in the last digits as any two BLAS builds do — enough, over 20,000 L1-driven steps, to move a marginal
seed of BIMT's S4 task across its threshold, which is why the token recipes train their seeds one at a time.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .graph import ELEMENTWISE, IN_PERM, OUT_PERM
from .layout import POSITIONS
from .train import Callback

__all__ = ["StackedMLP", "StackedTokenMLP", "StackedLinear", "StackedModule", "ReplicaOptimizer", "StackedPenalty",
           "RunningLosses", "replica_losses", "unstack"]


class _BatchedLinear(torch.autograd.Function):
    """``x (S, N, in) @ W (S, out, in)ᵀ + b (S, out)`` whose backward forms every product as ``F.linear``'s does
    (``∂W = gᵀ x``, ``∂x = g W``, ``∂b = Σ g``), so each replica's gradients equal a single run's bit for bit."""

    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return torch.baddbmm(b[:, None, :], x, W.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        # the first layer's input needs no gradient, and its ∂x is the largest product (784 wide for MNIST)
        gx = torch.bmm(g, W) if ctx.needs_input_grad[0] else None
        return gx, torch.bmm(g.transpose(1, 2), x), g.sum(1)


class StackedMLP(nn.Module):
    """``S`` embedded ``nn.Sequential`` MLPs of one shape as one module: ``forward(x (S, N, in)) → (S, N, out)``.

    Each replica's input/output permutations (``topo_in_perm``/``topo_out_perm`` of :func:`~topotorch.embed`) are
    applied per replica. After construction the replicas' own parameters and permutation buffers are views of
    this module's stacks (see :func:`unstack` to give them back tensors of their own)."""

    def __init__(self, models: Sequence[nn.Sequential]):
        super().__init__()
        if not models:
            raise ValueError("no replicas given")
        first = models[0]
        kinds = [type(m) for m in first]
        for k, m in enumerate(models):
            if [type(x) for x in m] != kinds:
                raise ValueError(f"replica {k} has modules {[type(x).__name__ for x in m]}, replica 0 "
                                 f"{[t.__name__ for t in kinds]}: replicas must share one architecture")
            if not hasattr(m, IN_PERM):
                raise ValueError(f"replica {k} is not embedded (no {IN_PERM}): embed each replica first")
        for x in first:
            if not isinstance(x, (nn.Linear,) + ELEMENTWISE):
                raise ValueError(f"replicas stack Linear and elementwise modules only, not {type(x).__name__}")
        self.S = len(models)
        lin = [[x for x in m if isinstance(x, nn.Linear)] for m in models]
        for k, ls in enumerate(lin):
            if [tuple(x.weight.shape) for x in ls] != [tuple(x.weight.shape) for x in lin[0]]:
                raise ValueError(f"replica {k} has other layer shapes than replica 0")
        self.weights = nn.ParameterList([nn.Parameter(torch.stack([ls[i].weight.detach() for ls in lin]).clone())
                                         for i in range(len(lin[0]))])
        self.biases = nn.ParameterList([nn.Parameter(torch.stack([ls[i].bias.detach() for ls in lin]).clone())
                                        for i in range(len(lin[0]))])
        self.register_buffer("in_perm", torch.stack([getattr(m, IN_PERM) for m in models]).clone())
        self.register_buffer("out_perm", torch.stack([getattr(m, OUT_PERM) for m in models]).clone())
        self.acts = [x for x in first if not isinstance(x, nn.Linear)]  # shared: elementwise, stateless
        self.order = ["lin" if isinstance(x, nn.Linear) else "act" for x in first]
        self.replicas = list(models)
        for s, (m, ls) in enumerate(zip(models, lin)):  # alias every replica's tensors into the stacks
            for i, x in enumerate(ls):
                x._parameters["weight"] = nn.Parameter(self.weights[i].data[s], requires_grad=False)
                x._parameters["bias"] = nn.Parameter(self.biases[i].data[s], requires_grad=False)
            m._buffers[IN_PERM] = self.in_perm[s]
            m._buffers[OUT_PERM] = self.out_perm[s]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S, N = x.shape[0], x.shape[1]
        if S != self.S:
            raise ValueError(f"input holds {S} replicas' batches, the stack has {self.S}")
        h = x.gather(2, self.in_perm[:, None, :].expand(S, N, self.in_perm.shape[1]))
        li = ai = 0
        for kind in self.order:
            if kind == "lin":
                h = _BatchedLinear.apply(h, self.weights[li], self.biases[li])
                li += 1
            else:
                h = self.acts[ai](h)
                ai += 1
        back = torch.argsort(self.out_perm, dim=1)
        return h.gather(2, back[:, None, :].expand(S, N, back.shape[1]))

    def pairs(self, s: int) -> list[tuple[torch.Tensor, nn.Parameter]]:
        """``(replica s's parameter, its stacked parameter)`` for every weight and bias."""
        lin = [x for x in self.replicas[s] if isinstance(x, nn.Linear)]
        return ([(x.weight, W) for x, W in zip(lin, self.weights)] + [(x.bias, b) for x, b in zip(lin, self.biases)])

    def module(self, s: int) -> nn.Module:
        """Replica ``s``'s own model (what a single run trains)."""
        return self.replicas[s]

    @torch.no_grad()
    def release(self, s: int) -> None:
        """Give replica ``s`` tensors of its own again: copies of its slices."""
        m = self.replicas[s]
        for x in m:
            if isinstance(x, nn.Linear):
                for name in ("weight", "bias"):
                    x._parameters[name] = nn.Parameter(x._parameters[name].detach().clone())
        m._buffers[IN_PERM] = m._buffers[IN_PERM].clone()
        m._buffers[OUT_PERM] = m._buffers[OUT_PERM].clone()


class StackedTokenMLP(StackedMLP):
    """``S`` :class:`~topotorch.models.TokenMLP` replicas (BIMT's token tasks): each replica's embedding
    ``(vocab, dim)`` stacked as ``(S, vocab, dim)`` ahead of the stacked MLP of their embedded ``.mlp``;
    ``forward(tokens (S, N, n_tokens) long) → (S, N, out)``. A replica's embedding lookup and its backward (rows
    accumulated in the order of its tokens) are the single model's; its ``.embedding`` aliases its slice."""

    def __init__(self, models: Sequence[nn.Module]):
        if not models or any(not hasattr(m, "embedding") or not hasattr(m, "mlp") for m in models):
            raise ValueError("StackedTokenMLP stacks TokenMLPs (an .embedding and an embedded .mlp each)")
        super().__init__([m.mlp for m in models])
        shapes = {(tuple(m.embedding.shape), m.n_tokens) for m in models}
        if len(shapes) != 1:
            raise ValueError(f"replicas must share one embedding shape and token count, got {sorted(shapes)}")
        self.owners, self.n_tokens = list(models), models[0].n_tokens
        self.embedding = nn.Parameter(torch.stack([m.embedding.detach() for m in models]).clone())
        for s, m in enumerate(models):
            m._parameters["embedding"] = nn.Parameter(self.embedding.data[s], requires_grad=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[2] != self.n_tokens or tokens.is_floating_point():
            raise ValueError(f"StackedTokenMLP takes (replicas, batch, {self.n_tokens}) integer tokens, got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        S = tokens.shape[0]
        e = self.embedding[torch.arange(S, device=tokens.device)[:, None, None], tokens]  # (S, N, n_tokens, dim)
        return super().forward(e.flatten(2))

    def pairs(self, s: int) -> list[tuple[torch.Tensor, nn.Parameter]]:
        return [(self.owners[s].embedding, self.embedding)] + super().pairs(s)

    def module(self, s: int) -> nn.Module:
        return self.owners[s]

    @torch.no_grad()
    def release(self, s: int) -> None:
        super().release(s)
        m = self.owners[s]
        m._parameters["embedding"] = nn.Parameter(m._parameters["embedding"].detach().clone())


class _BatchedLinearNoBias(torch.autograd.Function):
    """``x (S, N, in) @ W (S, out, in)ᵀ``, backward formed as ``F.linear``'s (see :class:`_BatchedLinear`)."""

    @staticmethod
    def forward(ctx, x, W):
        ctx.save_for_backward(x, W)
        return torch.bmm(x, W.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        return torch.bmm(g, W) if ctx.needs_input_grad[0] else None, torch.bmm(g.transpose(1, 2), x)


class StackedLinear(nn.Module):
    """``S`` replicas' ``nn.Linear`` (one shape) as one layer on inputs whose leading dimension holds the replicas'
    batches one after another: ``(S·B, …, in) → (S·B, …, out)``, one batched product."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.S = len(linears)
        if len({(tuple(x.weight.shape), x.bias is None) for x in linears}) != 1:
            raise ValueError("stacked Linear layers must share one shape and whether they have a bias")
        self.weight = nn.Parameter(torch.stack([x.weight.detach() for x in linears]).clone())
        self.bias = (nn.Parameter(torch.stack([x.bias.detach() for x in linears]).clone())
                     if linears[0].bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if shape[0] % self.S:
            raise ValueError(f"a leading dimension of {shape[0]} does not hold {self.S} replicas' equal batches")
        h = x.reshape(self.S, -1, shape[-1])
        y = (_BatchedLinear.apply(h, self.weight, self.bias) if self.bias is not None
             else _BatchedLinearNoBias.apply(h, self.weight))
        return y.reshape(*shape[:-1], y.shape[-1])


class StackedModule(nn.Module):
    """``S`` replicas of one architecture run as one module: a copy of the first whose every ``nn.Linear`` is a
    :class:`StackedLinear` over the replicas' (each replica's weight and bias then alias its slice, as in
    :class:`StackedMLP`). ``forward(x (S·B, …)) → (S·B, …)``: the replicas' batches one after another.

    Every other submodule must hold no parameters or buffers (a LayerNorm's or BatchNorm's would be shared, not
    per replica: refused; unit positions equal in every replica are allowed) and act on each sample alone —
    attention, activations, residual sums do — so that the concatenated batches pass through it as each replica's
    would."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        import copy
        if not models:
            raise ValueError("no replicas given")
        first = models[0]
        self.names = [n for n, m in first.named_modules() if isinstance(m, nn.Linear)]
        for n, m in first.named_modules():
            if isinstance(m, nn.Linear):
                continue
            # unit positions (a graph's or a topography's) are data, not state: shared when every replica's agree
            own = list(m.named_parameters(recurse=False)) + [
                (k, b) for k, b in m.named_buffers(recurse=False)
                if k != POSITIONS or not all(torch.equal(b, x.get_submodule(n).get_buffer(k)) for x in models)]
            if own:
                raise ValueError(f"replicas can be stacked through their Linear layers only: {n or 'the model'} "
                                 f"({type(m).__name__}) holds {', '.join(k for k, _ in own)}")
        for k, m in enumerate(models):
            if [n for n, x in m.named_modules() if isinstance(x, nn.Linear)] != self.names:
                raise ValueError(f"replica {k} has other Linear layers than replica 0: replicas must share one "
                                 "architecture")
        self.S, self.replicas = len(models), list(models)
        self.net = copy.deepcopy(first)
        for n in self.names:
            parent, _, leaf = n.rpartition(".")
            setattr(self.net.get_submodule(parent) if parent else self.net, leaf,
                    StackedLinear([m.get_submodule(n) for m in models]))
        for s, m in enumerate(models):  # alias every replica's tensors into the stacks
            for n in self.names:
                x, st = m.get_submodule(n), self.net.get_submodule(n)
                x._parameters["weight"] = nn.Parameter(st.weight.data[s], requires_grad=False)
                if st.bias is not None:
                    x._parameters["bias"] = nn.Parameter(st.bias.data[s], requires_grad=False)

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def stacked(self, name: str) -> StackedLinear:
        """The stacked layer of the replicas' Linear ``name``."""
        return self.net.get_submodule(name)

    def pairs(self, s: int) -> list[tuple[torch.Tensor, nn.Parameter]]:
        """``(replica s's parameter, its stacked parameter)`` for every weight and bias."""
        out = []
        for n in self.names:
            x, st = self.replicas[s].get_submodule(n), self.stacked(n)
            out.append((x.weight, st.weight))
            if st.bias is not None:
                out.append((x.bias, st.bias))
        return out

    def module(self, s: int) -> nn.Module:
        return self.replicas[s]

    @torch.no_grad()
    def release(self, s: int) -> None:
        for n in self.names:
            x = self.replicas[s].get_submodule(n)
            for name in ("weight", "bias"):
                if x._parameters.get(name) is not None:
                    x._parameters[name] = nn.Parameter(x._parameters[name].detach().clone())


class ReplicaOptimizer:
    """What relocation needs of an optimizer, for replica ``s`` of a stacked one: ``.state`` maps the replica's
    parameters to views of its slice of the stacked per-parameter state (Adam's moments), which
    :meth:`~topotorch.graph.NeuronGraph.permute` permutes in place."""

    def __init__(self, optimizer: torch.optim.Optimizer, stacked: StackedMLP, s: int):
        self.optimizer, self.stacked, self.s = optimizer, stacked, s

    @property
    def state(self) -> dict:
        out = {}
        for rp, sp in self.stacked.pairs(self.s):
            st = self.optimizer.state.get(sp, {})
            out[rp] = {k: v[self.s] for k, v in st.items()
                       if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == self.stacked.S}
        return out


class StackedPenalty(Callback):
    """BIMT's wiring penalty on every replica at once: ``λ(step)·∂cost/∂W`` added to the stacked gradients, the
    same elementwise arithmetic as :class:`~topotorch.train.WiringPenalty` on each replica. ``costs``: the replicas'
    :class:`~topotorch.costs.WiringCost` (equal geometry; the first gives the factors), logged per replica."""

    def __init__(self, stacked: StackedMLP, costs: Sequence, lam_at: Callable[[int], float], bias_start: int = 0,
                 rows: slice | None = None):
        # rows: the replicas the penalty applies to (all by default); stacked: anything with .weights and .biases
        # lists of stacked parameters in the order of the graph's weights
        self.stacked, self.costs, self.lam_at, self.bias_start = stacked, list(costs), lam_at, bias_start
        self.rows = rows if rows is not None else slice(None)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        scale = self.lam_at(step)
        if scale == 0:
            return
        cost, bias = self.costs[0], step >= self.bias_start
        cost._sync()
        for k, w in enumerate(cost.graph.weights):
            W, r = self.stacked.weights[k], self.rows
            f = cost._factors(k, W[0])[1]  # (out, in): every replica has the same layouts
            if W.grad is None:
                W.grad = torch.zeros_like(W)
            W.grad[r].addcmul_(torch.sign(W[r]), f, value=scale)
            b, bs = self.stacked.biases[k], cost._bscale[k]
            if bias and w.bias is not None and bs:
                if b.grad is None:
                    b.grad = torch.zeros_like(b)
                b.grad[r].add_(torch.sign(b[r]), alpha=scale * cost.l0 * bs)

    def log(self, step: int) -> dict:
        """Each replica's cost (``cost/i``, i its index in the batch) and λ: one ``lam`` column when the penalty
        covers the whole batch, else ``lam/i`` for each of its rows (other penalties cover the other rows)."""
        first = self.rows.start or 0
        with torch.no_grad():
            bias = step >= self.bias_start
            row = {f"cost/{first + s}": c.value(bias=bias).item() for s, c in enumerate(self.costs)}
        lam = self.lam_at(step)
        if self.rows == slice(None):
            return {**row, "lam": lam}
        return {**row, **{f"lam/{first + s}": lam for s in range(len(self.costs))}}


class RunningLosses(Callback):
    """Each replica's training loss, averaged over the steps since the previous log row (as ``fit``'s
    ``train_loss`` of a single run); checkpointed with the run."""

    def __init__(self, S: int):
        self.sum, self.count = torch.zeros(S, dtype=torch.float64), 0

    def add(self, losses: torch.Tensor) -> None:
        self.sum += losses.detach().double().cpu()
        self.count += 1

    def log(self, step: int) -> dict:
        row = {f"train_loss/{s}": float(v) / max(1, self.count) for s, v in enumerate(self.sum)}
        self.sum.zero_()
        self.count = 0
        return row

    def state_dict(self) -> dict:
        return {"sum": self.sum.tolist(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sum = torch.tensor(state.get("sum", [0.0] * len(self.sum)), dtype=torch.float64)
        self.count = int(state.get("count", 0))


class _ReplicaMSE(torch.autograd.Function):
    """``(S,)`` mean squared errors whose backward is ``F.mse_loss``'s, ``(out − y) · 2/n · g``, per replica."""

    @staticmethod
    def forward(ctx, out, y):
        d = out - y
        ctx.save_for_backward(d)
        return d.pow(2).flatten(1).mean(1)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        n = d[0].numel()
        return d.mul(2.0 / n).mul_(g.view(-1, *([1] * (d.dim() - 1)))), None


def replica_losses(lossf: Callable, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(S,)``: ``lossf(out[s], y[s])`` for every replica — mean squared error and cross-entropy as one batched
    operation, any other loss replica by replica."""
    S = out.shape[0]
    if lossf is F.mse_loss:
        return _ReplicaMSE.apply(out, y)
    if lossf is F.cross_entropy:
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(S, -1).mean(1)
    return torch.stack([lossf(out[s], y[s]) for s in range(S)])


@torch.no_grad()
def unstack(stacked: StackedMLP, optimizer: torch.optim.Optimizer | None = None) -> list[torch.optim.Optimizer | None]:
    """Give every replica tensors of its own again (copies of its slice) and, with ``optimizer`` (the stacked
    AdamW/Adam), an optimizer of the same class and settings holding its slice of the state, so that a replica
    continues exactly as a single run would. Returns the replicas' optimizers (``None`` without one)."""
    opts = []
    for s in range(stacked.S):
        stacked.release(s)
        m = stacked.module(s)
        if optimizer is None:
            opts.append(None)
            continue
        accepted = inspect.signature(type(optimizer).__init__).parameters
        group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params" and k in accepted}
        opt = type(optimizer)(list(m.parameters()), **group)
        for own, sp in stacked.pairs(s):  # the replica's own parameters now
            st = optimizer.state.get(sp)
            if st:
                opt.state[own] = {k: (v[s].clone() if isinstance(v, torch.Tensor) and v.dim() > 0 else
                                      v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
        opts.append(opt)
    return opts

