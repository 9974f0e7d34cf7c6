"""Pruning and the structure of a spatial network: connectivity, dependencies, modules, modularity.

Indices of inputs and outputs are the model's own (0-based, before the input/output permutations), so
``dependencies()[0] == [0, 2]`` reads "output y1 depends on x1 and x3" whatever the relocation did.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torch import nn

from .graph import NeuronGraph
from .layout import distance

__all__ = ["Snapshot", "threshold", "connectivity", "dependencies", "modules", "module_extents", "extents_overlap",
           "modularity", "modularity_q", "wiring_length"]
__all__ += ["smooth_map", "morans_i_null"]


@dataclass
class Snapshot:
    """Parameters saved by :func:`threshold`; ``revert()`` puts them back."""

    model: nn.Module
    saved: dict
    kept: int
    total: int

    @torch.no_grad()
    def revert(self) -> None:
        for name, p in self.model.named_parameters():
            if name in self.saved:
                p.copy_(self.saved[name])


@torch.no_grad()
def threshold(model: nn.Module, thr: float) -> Snapshot:
    """Zero every parameter entry with ``|p| <= thr`` (BIMT's thresholding); returns a revertible snapshot."""
    if not thr >= 0:
        raise ValueError(f"threshold must be non-negative, got {thr}")
    saved, kept, total = {}, 0, 0
    for name, p in model.named_parameters():
        if not p.is_floating_point():
            continue
        saved[name] = p.detach().clone()
        mask = p.abs() > thr
        kept += int(mask.sum())
        total += p.numel()
        p.mul_(mask)
    return Snapshot(model, saved, kept, total)


def _strength(w) -> torch.Tensor:
    W = w.weight.detach().abs()
    return W.flatten(2).sum(-1) if W.dim() > 2 else W


def connectivity(graph: NeuronGraph, thr: float = 0.0) -> list[torch.Tensor]:
    """Per weight layer, the boolean ``(dst.n, src.n)`` matrix of connections with strength ``> thr``."""
    return [(_strength(w) > thr).cpu() for w in graph.weights]


def _io_labels(graph: NeuronGraph):
    """Original input index of every input unit, original output index of every output unit."""
    ip, op = graph.input_perm(), graph.output_perm()
    n_in, n_out = graph.layers[0].n, graph.layers[-1].n
    ip = torch.arange(n_in) if ip is None else ip.cpu()
    op = torch.arange(n_out) if op is None else op.cpu()
    return ip.tolist(), op.tolist()


def dependencies(graph: NeuronGraph, thr: float = 0.0) -> list[list[int]]:
    """For each model output ``o`` (original index), the sorted inputs it depends on through kept weights."""
    for w in graph.weights:
        if w.dst <= w.src:
            raise ValueError("dependencies() needs weight layers ordered forward (dst > src)")
    conn = connectivity(graph, thr)
    L = len(graph.layers)
    reach: list[torch.Tensor | None] = [None] * L  # reach[i][u, o]: unit u of layer i feeds output unit o
    reach[-1] = torch.eye(graph.layers[-1].n, dtype=torch.float64)
    for i in range(L - 2, -1, -1):
        acc = torch.zeros(graph.layers[i].n, graph.layers[-1].n, dtype=torch.float64)
        for w, A in zip(graph.weights, conn):
            if w.src == i and reach[w.dst] is not None:
                acc += A.double().T @ reach[w.dst]
        reach[i] = (acc > 0).double()
    ip, op = _io_labels(graph)
    deps: list[list[int]] = [[] for _ in op]
    for unit_out, o in enumerate(op):
        deps[o] = sorted(ip[u] for u in torch.nonzero(reach[0][:, unit_out]).flatten().tolist())
    return deps


def _adjacency(graph: NeuronGraph, thr: float) -> tuple[csr_matrix, np.ndarray]:
    """Symmetric weighted adjacency over all units (kept |W| as weights) and each layer's offset."""
    offs = np.cumsum([0] + [l.n for l in graph.layers])
    rows, cols, vals = [], [], []
    for w in graph.weights:
        S = _strength(w).double().cpu().numpy()
        d, s = np.nonzero(S > thr)
        rows += [offs[w.dst] + d, offs[w.src] + s]
        cols += [offs[w.src] + s, offs[w.dst] + d]
        vals += [S[d, s], S[d, s]]
    N = int(offs[-1])
    if rows:
        A = csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(N, N))
    else:
        A = csr_matrix((N, N))
    return A, offs


def modules(graph: NeuronGraph, thr: float = 0.0) -> list[dict]:
    """Connected components of the pruned network that contain an output.

    Returns ``[{"inputs": [...], "outputs": [...]}, ...]`` with original indices, sorted by first output.
    """
    comp, offs = _components(graph, thr)
    ip, op = _io_labels(graph)
    found: dict[int, dict] = {}
    for unit, o in enumerate(op):
        c = comp[offs[-2] + unit]
        found.setdefault(c, {"inputs": [], "outputs": []})["outputs"].append(o)
    for unit, x in enumerate(ip):
        c = comp[offs[0] + unit]
        if c in found:
            found[c]["inputs"].append(x)
    out = [{"inputs": sorted(set(m["inputs"])), "outputs": sorted(m["outputs"])} for m in found.values()]
    return sorted(out, key=lambda m: m["outputs"][0])


def _components(graph: NeuronGraph, thr: float):
    A, offs = _adjacency(graph, thr)
    _, comp = connected_components(A, directed=False)
    return comp, offs


def module_extents(graph: NeuronGraph, thr: float = 0.0) -> list[list[list[float] | None]]:
    """For each module of :func:`modules` (same order), per neuron layer the ``[min, max]`` of the first
    coordinate of its units (``None`` where it has no unit in that layer) — where the module sits."""
    comp, offs = _components(graph, thr)
    _, op = _io_labels(graph)
    first_out: dict[int, int] = {}
    for unit, o in enumerate(op):
        c = comp[offs[-2] + unit]
        first_out[c] = min(o, first_out.get(c, o))
    result = []
    for c in sorted(first_out, key=first_out.get):
        per_layer = []
        for i, layer in enumerate(graph.layers):
            units = np.nonzero(comp[offs[i]:offs[i + 1]] == c)[0]
            if len(units) == 0:
                per_layer.append(None)
                continue
            x = layer.layout.unit_coords[units, 0]
            per_layer.append([float(x.min()), float(x.max())])
        result.append(per_layer)
    return result


def extents_overlap(extents: list[list[list[float] | None]]) -> bool:
    """Whether any two modules' position ranges overlap in some neuron layer."""
    for a in range(len(extents)):
        for b in range(a + 1, len(extents)):
            for ra, rb in zip(extents[a], extents[b]):
                if ra is not None and rb is not None and ra[0] <= rb[1] and rb[0] <= ra[1]:
                    return True
    return False


def modularity_q(A: np.ndarray, labels: np.ndarray) -> float:
    """Newman's modularity Q = (1/2m) Σ_ij (A_ij − k_i k_j / 2m) δ(c_i, c_j) of a weighted undirected graph."""
    A = np.asarray(A, dtype=np.float64)
    two_m = A.sum()
    if two_m <= 0:
        return 0.0
    k = A.sum(1)
    q = 0.0
    for c in np.unique(labels):
        idx = labels == c
        q += A[np.ix_(idx, idx)].sum() - k[idx].sum() ** 2 / two_m
    return float(q / two_m)


def modularity(graph: NeuronGraph, thr: float = 0.0, method: str = "louvain", seed: int = 0) -> tuple[float, np.ndarray]:
    """Newman's modularity Q of the pruned weighted network and the partition found (labels per unit, in
    layer order; ``-1`` for units without kept connections, which are left out).

    ``method="louvain"`` (default): networkx's Louvain communities (seeded, resolution 1), the partition
    the field computes. ``"eigenvector"``: connected components split by Newman's leading-eigenvector method
    (Newman 2006) while Q increases.
    """
    if method not in ("louvain", "eigenvector"):
        raise ValueError(f"method must be 'louvain' or 'eigenvector', got {method!r}")
    A_sp, _ = _adjacency(graph, thr)
    A = A_sp.toarray()
    active = A.sum(1) > 0
    labels = np.full(A.shape[0], -1)
    if not active.any():
        return 0.0, labels
    Aa = A[np.ix_(active, active)]
    if method == "louvain":
        import networkx as nx
        G = nx.from_numpy_array(Aa)
        lab = np.empty(len(Aa), dtype=int)
        for c, members in enumerate(nx.community.louvain_communities(G, weight="weight", seed=seed)):
            lab[list(members)] = c
        labels[active] = lab
        return modularity_q(Aa, lab), labels
    _, lab = connected_components(csr_matrix(Aa), directed=False)
    k = Aa.sum(1)
    two_m = Aa.sum()
    queue = list(np.unique(lab))
    nxt = lab.max() + 1
    while queue:
        c = queue.pop()
        idx = np.nonzero(lab == c)[0]
        if len(idx) < 2:
            continue
        B = Aa[np.ix_(idx, idx)] - np.outer(k[idx], k[idx]) / two_m
        B -= np.diag(B.sum(1))  # generalised modularity matrix of a subgroup
        vals, vecs = np.linalg.eigh(B)
        s = np.where(vecs[:, -1] >= 0, 1.0, -1.0)
        gain = s @ B @ s / (2 * two_m)
        if vals[-1] <= 1e-10 or gain <= 1e-10 or abs(s.sum()) == len(s):
            continue
        lab[idx[s < 0]] = nxt
        queue += [c, nxt]
        nxt += 1
    labels[active] = lab
    return modularity_q(Aa, lab), labels


def wiring_length(graph: NeuronGraph, thr: float = 0.0, gap: float = 0.1) -> float:
    """Total length of the kept connections: Σ ‖p_i − p_j‖₂ with the layer gap as a third coordinate."""
    total = 0.0
    for w, A in zip(graph.weights, connectivity(graph, thr)):
        d = distance(graph.layers[w.dst].layout, graph.layers[w.src].layout, p=2, gap=gap)
        total += float(d[A].sum())
    return total


def spatial_variance(a: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Spatial spread of non-negative activation maps (seed 001).

    ``a (..., n)`` is normalised to sum 1 per map, ``μ = Σ a_i c_i``, and
    ``V = Σ a_i ‖c_i − μ‖² / (1 − Σ a_i²)`` (the unbiased weighted variance; units: coordinate units²).
    ``coords (n, dim)``. Maps that sum to 0 (or concentrate on one unit) give NaN.
    """
    a = torch.as_tensor(a, dtype=torch.float64)
    c = torch.as_tensor(coords, dtype=torch.float64)
    if c.dim() != 2 or a.shape[-1] != c.shape[0]:
        raise ValueError(f"maps of shape {tuple(a.shape)} do not fit coordinates of shape {tuple(c.shape)}")
    if (a < 0).any():
        raise ValueError("spatial_variance needs non-negative maps (e.g. post-ReLU activations)")
    total = a.sum(-1, keepdim=True)
    w = torch.where(total > 0, a / total.clamp_min(1e-300), torch.full_like(a, float("nan")))
    mu = w @ c
    sq = ((c.expand(*w.shape, c.shape[1]) - mu.unsqueeze(-2)) ** 2).sum(-1)
    return (w * sq).sum(-1) / (1 - (w * w).sum(-1))


__all__ += ["spatial_variance"]


# ---- topographic maps ----------------------------------------------------------------------------

# One implementation of each map statistic: topotorch.probe.stats (sparse, any layout).

def welch_t(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit Welch t and two-sided p of ``a (N_a, n)`` vs ``b (N_b, n)`` (:func:`topotorch.probe.stats.welch_t`)."""
    from .probe.stats import welch_t as f
    return f(a, b)


def fdr(p, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg: adjusted p-values and the mask of discoveries at level ``q``."""
    from .probe.stats import fdr as f
    return f(p, q)


def _coords(layout_or_coords) -> np.ndarray:
    from .probe.stats import coords_of
    return coords_of(layout_or_coords)


def morans_i(values, layout_or_coords, spacing: float = 1.0) -> float:
    """Moran's I with queen contiguity (units within ``spacing`` in every coordinate) and row-standardised
    weights, as PySAL's esda computes it (:func:`topotorch.probe.stats.morans_i`)."""
    from .probe.stats import morans_i as f
    return f(values, layout_or_coords, radius=spacing)


def smooth_map(values, layout_or_coords, fwhm: float) -> np.ndarray:
    """A map smoothed by a Gaussian of ``fwhm`` cells (:func:`topotorch.probe.stats.smooth_map`)."""
    from .probe.stats import smooth_map as f
    return f(values, layout_or_coords, fwhm)


def morans_i_null(values, layout_or_coords, shuffles: int = 100, seed: int = 0, fwhm: float | None = None) -> float:
    """Mean Moran's I of the same values on shuffled positions (smoothed after shuffling with ``fwhm``); the
    permutation p-value and spread are in :func:`topotorch.probe.stats.morans_i_test`."""
    from .probe.stats import morans_i_test
    return morans_i_test(values, layout_or_coords, shuffles, seed, fwhm=fwhm)["null_mean"]


def correlation_vs_distance(acts, layout_or_coords, bins: int = 12) -> dict:
    """Mean pairwise response correlation in distance bins: ``{"distance", "correlation", "count"}``."""
    from .costs.correlation import correlation_matrix
    r = correlation_matrix(torch.as_tensor(acts, dtype=torch.float32)).double().numpy()
    c = _coords(layout_or_coords)
    from .probe.stats import binned_curve, pair_distance
    i, j = np.triu_indices(len(c), 1)
    cd = binned_curve(pair_distance(c, i, c, j), r[i, j], bins)
    return {"distance": cd["distance"], "correlation": cd["value"], "count": cd["count"]}


def smoothness_index(values, layout_or_coords, bins: int = 10) -> float:
    """TDANN's smoothness: with c_b the mean dissimilarity of unit pairs in distance bin b (nearest first),
    S = (max_b c_b − c_0) / max_b c_b ∈ [0, 1]; 1 when neighbours agree and distant units differ.

    ``values (n,)``: a scalar preference, dissimilarity ``|Δvalue|``. ``values (n, k)``: a tuning profile per
    unit (e.g. mean response to each class), dissimilarity 1 − Pearson r between the two profiles."""
    x = np.asarray(values, dtype=np.float64)
    c = _coords(layout_or_coords)
    i, j = np.triu_indices(len(c), 1)
    from .probe.stats import pair_distance
    dd = pair_distance(c, i, c, j)
    if x.ndim == 2:
        z = x - x.mean(1, keepdims=True)
        nrm = np.linalg.norm(z, axis=1)
        z = np.divide(z, nrm[:, None], out=np.zeros_like(z), where=nrm[:, None] > 0)
        dv = 1.0 - (z[i] * z[j]).sum(1)
    else:
        x = x.ravel()
        dv = np.abs(x[i] - x[j])
    edges = np.linspace(dd.min(), dd.max() + 1e-9, bins + 1)
    k = np.clip(np.digitize(dd, edges) - 1, 0, bins - 1)
    cnt = np.bincount(k, minlength=bins)
    cb = (np.bincount(k, weights=dv, minlength=bins) / np.maximum(cnt, 1))[cnt > 0]
    top = cb.max()
    return float((top - cb[0]) / top) if top > 0 else 0.0


__all__ += ["welch_t", "fdr", "morans_i", "correlation_vs_distance", "smoothness_index"]


# ---- small-worldness (seRNN's structural measure) --------------------------------------------------------

def binarise_top(W, quantile: float = 0.9) -> np.ndarray:
    """seRNN's binarisation: the connections whose ``|W|`` is above its ``quantile`` (top 10 %) as a boolean matrix."""
    A = np.abs(np.asarray(W, dtype=np.float64))
    return A > np.quantile(A, quantile)


def _clustering_and_path_length(M: np.ndarray) -> tuple[float, float]:
    """Average clustering coefficient of the undirected simple graph ``M`` (bool, symmetric, no self-loops) and the
    average shortest-path length of its largest connected component — networkx's ``average_clustering`` and
    ``average_shortest_path_length`` to the last bit (same integer counts, same summation order), with the
    breadth-first searches in scipy's compiled ``csgraph`` rather than Python."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components, shortest_path
    A = M.astype(np.int64)
    deg = A.sum(1)
    tri2 = np.einsum("ij,jk,ki->i", A, A, A)  # twice the triangles through each node
    c = np.where(deg > 1, tri2 / np.maximum(deg * (deg - 1), 1), 0.0)
    C = sum(c.tolist()) / len(c)  # networkx sums the per-node values in node order
    _, labels = connected_components(csr_matrix(A), directed=False)
    big = np.flatnonzero(labels == np.argmax(np.bincount(labels)))  # the first largest, as networkx's max()
    if len(big) < 2:
        return C, float("nan")
    d = shortest_path(csr_matrix(A[np.ix_(big, big)]), directed=False, unweighted=True)
    return C, int(d.sum()) / (len(big) * (len(big) - 1))


def small_worldness(A, n_random: int = 10, seed: int = 0) -> dict:
    """Humphries' small-worldness σ = (C / C_rand) / (L / L_rand) of the undirected graph ``A | Aᵀ`` (self-loops
    dropped): C the average clustering coefficient, L the average shortest-path length of the largest connected
    component, ``_rand`` the means over ``n_random`` random graphs with the same numbers of nodes and edges
    (networkx ``gnm_random_graph``). σ > 1: more clustered than chance at a similar path length. (seRNN's public
    notebook computed the inverse ratio for two years — a small-world network came out below 1 there.)"""
    import networkx as nx
    M = np.asarray(A, dtype=bool)
    M = (M | M.T) & ~np.eye(len(M), dtype=bool)
    n, m = len(M), int(M.sum()) // 2
    if m == 0:
        return {"sigma": float("nan"), "clustering": 0.0, "path_length": float("nan"), "clustering_random": float("nan"),
                "path_length_random": float("nan"), "edges": 0}
    C, L = _clustering_and_path_length(M)
    rs = [_clustering_and_path_length(nx.to_numpy_array(nx.gnm_random_graph(n, m, seed=seed + k), dtype=bool))
          for k in range(n_random)]
    Cr, Lr = float(np.mean([r[0] for r in rs])), float(np.mean([r[1] for r in rs]))
    sigma = (C / Cr) / (L / Lr) if Cr > 0 and L > 0 else float("nan")
    return {"sigma": float(sigma), "clustering": float(C), "path_length": float(L), "clustering_random": Cr,
            "path_length_random": Lr, "edges": int(m)}


def louvain_q(A, seed: int = 0) -> float:
    """Newman's Q of the Louvain partition (networkx, resolution 1) of the weighted undirected graph
    ``(|A| + |A|ᵀ) / 2`` without self-loops; 0 for an empty graph."""
    import networkx as nx
    S = np.abs(np.asarray(A, dtype=np.float64))
    S = (S + S.T) / 2
    np.fill_diagonal(S, 0.0)
    if S.sum() <= 0:
        return 0.0
    G = nx.from_numpy_array(S)
    parts = nx.community.louvain_communities(G, weight="weight", seed=seed)
    return float(nx.community.modularity(G, parts, weight="weight"))


__all__ += ["binarise_top", "small_worldness", "louvain_q"]
