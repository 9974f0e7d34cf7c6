"""A whole probe of one model (and its control): the language and vision protocols asked for, written as
``probe.json``, PNG maps and one self-contained ``probe.html``. ``topotorch probe`` calls :func:`probe`."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import language as Lg
from . import vision as V
from ..hooks import first_tensor
from .maps import summarise
from .plots import plot_curves, plot_maps
from ..layout import Layout, positions_of
from .sheets import Sheet

__all__ = ["Subject", "Protocol", "probe_subject", "probe", "control_sheets", "language_report", "vision_report"]


@dataclass
class Subject:
    """A model to probe: its sheets, and what it reads — a tokenizer (language) or an input shape (vision)."""
    name: str
    model: nn.Module
    sheets: list[Sheet]
    tokenizer: object = None            # language: see probe.LM
    block_size: int | None = None
    input_shape: tuple | None = None    # vision: (C, H, W)
    transform: object = None            # vision: the model's input normalisation, applied to [0, 1] images
    language: bool = False


@dataclass
class Protocol:
    """What to measure. ``stimuli``: ``[(file, text column, condition column, "A-B")]``; ``blimp``: pairs as
    :func:`topotorch.data.blimp` returns them; ``categories``: an image-set source (see
    :func:`~topotorch.probe.vision.category_images`)."""
    stimuli: list = field(default_factory=list)
    blimp: dict | None = None
    gratings: bool = False
    categories: object = None
    per_category: int | None = 100
    wiring: list = field(default_factory=list)   # [(sheet A, sheet B)]: B's module reads A's (pooled) output
    fwhm: float | None = 2.0
    permutations: int = 999
    seed: int = 0
    batch: int = 64


def control_sheets(control: nn.Module, sheets: list[Sheet]) -> list[Sheet]:
    """The same sheets on a control model: its own positions where it carries them, else the model's (the
    fair control: same layout, no topographic training)."""
    out = []
    for s in sheets:
        try:
            mod = control.get_submodule(s.name)
        except AttributeError:
            raise ValueError(f"the control has no module {s.name!r} (the probed model's sheet)") from None
        pos = positions_of(mod)
        lay = s.layout if pos is None else Layout(pos.detach().double().cpu(), kind=s.layout.kind)
        if lay.n != s.layout.n:
            raise ValueError(f"the control's {s.name} has {lay.n} positioned units, the model's {s.layout.n}")
        out.append(Sheet(s.name, mod, lay, s.units))
    return out


def language_report(sub: Subject, p: Protocol) -> dict:
    lm = Lg.LM(sub.model, sub.tokenizer, sub.block_size)
    res = {}
    for path, text, cond, con in p.stimuli:
        if con.count("-") != 1 or not all(con.split("-")):
            raise ValueError(f"a contrast is A-B (two condition values), got {con!r}")
        a, b = con.split("-")
        res.setdefault("stimuli", {})[con] = Lg.table_contrast(lm, sub.sheets, path, text, cond, a, b, p.fwhm,
                                                               p.permutations, p.seed)
    if p.blimp:
        res["blimp"] = Lg.blimp_accuracy(lm, p.blimp, p.batch)
    return res


def vision_report(sub: Subject, p: Protocol) -> dict:
    if sub.input_shape is None:
        raise ValueError(f"{sub.name}: a vision probe needs the model's input shape C,H,W (--input-shape)")
    C, H, W = sub.input_shape
    res = {}
    kw = dict(batch=p.batch, transform=sub.transform)
    if p.gratings:
        g = V.gratings((H, W), C)
        resp = V.sheet_responses(sub.model, sub.sheets, g.images, **kw)
        per = {}
        for s in sub.sheets:
            tun = V.orientation_tuning(resp[s.name].numpy(), g)
            z, cell = V.orientation_map(tun["preferred"], 1 - np.nan_to_num(tun["circular_variance"], nan=1.0), s.layout)
            pw = V.pinwheel_density(z)
            sm = V.preference_smoothness(tun["preferred"], s.layout, period=180.0, seed=p.seed)
            ok = tun["responsive"]
            per[s.name] = {"osi": _nanmean(tun["osi"]), "circular_variance": _nanmean(tun["circular_variance"]),
                           "responsive_fraction": float(ok.mean()), "pinwheels": pw["pinwheels"],
                           "pinwheel_density": pw["density"], "column_spacing_cells": pw["column_spacing"] * cell,
                           "map_cell": cell, "orientation_smoothness": sm["smoothness"], "orientation_local": sm["local"],
                           "orientation_curve": sm["curve"],
                           "preferred": np.where(ok, tun["preferred"], np.nan).tolist(),
                           "osi_map": np.nan_to_num(tun["osi"]).tolist()}
        res["gratings"] = {"sheets": per, **{k: _nanmean([v[k] for v in per.values()]) for k in
                                             ("osi", "circular_variance", "pinwheel_density", "orientation_smoothness",
                                              "orientation_local")},
                           "n_gratings": len(g.images)}
    if p.categories is not None:
        x, y, names = V.category_images(p.categories, (H, W), C, p.per_category, p.seed)
        resp = V.sheet_responses(sub.model, sub.sheets, x, **kw)
        per_sheet = {s.name: V.category_selectivity(resp[s.name].numpy(), y, names, s.layout, p.fwhm, p.permutations,
                                                    p.seed) for s in sub.sheets}
        cats = {}
        for name_k in names:
            sheets = {n: {k: v for k, v in per_sheet[n][name_k].items() if k != "patch_labels"} for n in per_sheet}
            cats[name_k] = summarise({"sheets": sheets})
            cats[name_k]["patches"] = float(np.mean([v["patches"] for v in sheets.values()]))
        res["categories"] = {"source": str(p.categories), "names": names, "n_images": int(len(x)), "by_category": cats,
                             "category_patches": {k: c["patches"] for k, c in cats.items()}}
    if p.wiring:
        res["wiring"] = {f"{a}->{b}": sheet_wiring(sub.model, sub.sheets, a, b, torch.zeros(1, C, H, W), p.seed)
                         for a, b in p.wiring}
    # TDANN's curve on natural image statistics: crops of scikit-image's photographs
    nat = V.sheet_responses(sub.model, sub.sheets, V.natural_images((H, W), C, 256, p.seed), **kw)
    res["correlation_vs_distance"] = {s.name: V.correlation_vs_distance(nat[s.name].numpy(), s.layout, seed=p.seed)
                                      for s in sub.sheets}
    return res


def sheet_wiring(model: nn.Module, sheets: list[Sheet], a: str, b: str, example, seed: int = 0,
                 permutations: int = 99) -> dict:
    """Wiring length of the weights by which sheet ``b``'s module reads sheet ``a`` (directly, or through pooling of
    ``a``'s map), against shuffled positions (:func:`~topotorch.probe.stats.wiring_length`)."""
    from .stats import connections, pooled_positions, wiring_length
    by = {s.name: s for s in sheets}
    for n in (a, b):
        if n not in by:
            raise ValueError(f"--wiring names {n!r}, which is not a probed sheet; sheets: {list(by)}")
    sa, sb = by[a], by[b]
    got = {}
    def out_a(m, i, o):  # hooks return None: a returned value would replace the module's input/output
        got.setdefault("a", tuple(first_tensor(o).shape))

    def in_b(m, i):
        got.setdefault("b", tuple(i[0].shape))
    h1, h2 = sa.module.register_forward_hook(out_a), sb.module.register_forward_pre_hook(in_b)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = next(model.parameters())
            model(example.to(ref.device, ref.dtype if ref.is_floating_point() else example.dtype))
    finally:
        h1.remove(), h2.remove()
        model.train(was)
    out_a, in_b = got["a"][1:], got["b"][1:]
    src = sa.layout.unit_coords.numpy()
    if isinstance(sb.module, nn.Linear):
        if sb.units != "features" or in_b[-1] != sa.layout.n:
            raise ValueError(f"{b} (Linear, {in_b[-1]} inputs) does not read the {sa.layout.n} units of {a}")
        d, s_, w = connections(sb.module, None)
    else:
        if sa.units != "locations" or sb.units != "locations" or len(out_a) != 3 or len(in_b) != 3 or out_a[0] != in_b[0]:
            raise ValueError(f"wiring length between {a} and {b} needs two retinotopic (units='locations') conv "
                             f"sheets, {b} reading {a}'s map or a pooled copy; got maps {out_a} → {in_b}")
        if out_a != in_b:
            src = pooled_positions(src, *out_a, *in_b[1:])
        d, s_, w = connections(sb.module, in_b)
    return wiring_length(d, s_, w, sb.layout.unit_coords.numpy(), src, permutations, seed)


def _nanmean(v) -> float | None:
    a = np.asarray(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else None


def probe_subject(sub: Subject, p: Protocol) -> dict:
    """Every protocol of ``p`` that fits the subject (language or vision) on its sheets."""
    if not sub.sheets:
        raise ValueError(f"{sub.name}: no sheets to probe")
    if sub.language:
        if p.gratings or p.categories is not None:
            raise ValueError(f"{sub.name} is a language model: --gratings/--categories probe image models")
        if not p.stimuli and not p.blimp:
            raise ValueError("nothing to measure on a language model: give --stimuli FILE (with --text, --condition, "
                             "--contrast) and/or --blimp DIR")
        return language_report(sub, p)
    if p.stimuli or p.blimp:
        raise ValueError(f"{sub.name} is an image model: --stimuli/--blimp probe language models")
    if not p.gratings and p.categories is None and not p.wiring:
        raise ValueError("nothing to measure on an image model: give --gratings and/or --categories lfw|digits|mnist:DIR|DIR")
    return vision_report(sub, p)


def probe(subjects: list[Subject], p: Protocol, out) -> dict:
    """Probe each subject (the first is the model, the rest controls) and write ``out/probe.json``, the maps as
    PNG and ``out/probe.html``. Returns the JSON object."""
    from ..io import write_json
    out = Path(out)
    results = {s.name: probe_subject(s, p) for s in subjects}
    out.mkdir(parents=True, exist_ok=True)
    figs = _figures(subjects, results, out)
    doc = {"models": [s.name for s in subjects], "sheets": [sh.name for sh in subjects[0].sheets],
           "permutations": p.permutations, "fwhm": p.fwhm, "seed": p.seed, "results": results, "figures": figs}
    write_json(out / "probe.json", doc, indent=None)
    _html(doc, out)
    return doc


def _figures(subjects, results, out: Path) -> list[str]:
    figs = []
    lay = {s.name: {sh.name: sh.layout for sh in s.sheets} for s in subjects}
    first = results[subjects[0].name]
    for con in first.get("stimuli", {}):
        maps = {m: {n: (v["t_map"], lay[m][n], f"I {v['morans_i']:.2f} (null {v['morans_i_null']:.2f}, p {v['p_value']:.3f})")
                    for n, v in results[m]["stimuli"][con]["sheets"].items()} for m in results}
        f = f"stimuli_{_safe(con)}.png"
        plot_maps(maps, out / f, f"{con}: Welch t per unit")
        figs.append(f)
    if "gratings" in first:
        maps = {m: {n: (v["preferred"], lay[m][n], f"pinwheels/Λ² {v['pinwheel_density']:.2f}, S {v['orientation_smoothness']:.2f}")
                    for n, v in results[m]["gratings"]["sheets"].items()} for m in results}
        plot_maps(maps, out / "orientation_maps.png", "preferred orientation (degrees)", cmap="hsv", symmetric=False,
                  vmin=0, vmax=180, label="°")
        figs.append("orientation_maps.png")
        plot_curves({f"{m} {n}": v["orientation_curve"] for m in results for n, v in results[m]["gratings"]["sheets"].items()},
                    out / "orientation_vs_distance.png", "distance (cells)", "mean |Δ preferred orientation| (°)")
        figs.append("orientation_vs_distance.png")
    for cat in first.get("categories", {}).get("by_category", {}):
        maps = {m: {n: (v["t_map"], lay[m][n], f"I {v['morans_i']:.2f} (p {v['p_value']:.3f}), {v['patches']} patches")
                    for n, v in results[m]["categories"]["by_category"][cat]["sheets"].items()} for m in results}
        f = f"category_{_safe(cat)}.png"
        plot_maps(maps, out / f, f"{cat} vs the other images: Welch t per unit")
        figs.append(f)
    if "correlation_vs_distance" in first:
        plot_curves({f"{m} {n}": c for m in results for n, c in results[m]["correlation_vs_distance"].items()},
                    out / "correlation_vs_distance.png", "distance (cells)", "mean response correlation r")
        figs.append("correlation_vs_distance.png")
    return figs


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return html.escape(str(v))


def table_rows(doc: dict) -> list[tuple]:
    """``(measure, model, sheet or "mean", figure, value)`` rows of the headline figures."""
    rows = []
    keys = ("morans_i", "morans_i_null", "p_value", "morans_i_smoothed", "morans_i_smoothed_null", "p_value_smoothed",
            "significant_units")
    for m, r in doc["results"].items():
        for con, c in r.get("stimuli", {}).items():
            rows += [(f"stimuli {con}", m, "mean", k, c.get(k)) for k in keys]
            rows += [(f"stimuli {con}", m, n, k, v.get(k)) for n, v in c["sheets"].items() for k in keys[:3]]
        if "blimp" in r:
            rows += [("BLiMP accuracy", m, "–", k, v) for k, v in r["blimp"].items()]
        if "gratings" in r:
            g = r["gratings"]
            rows += [("gratings", m, "mean", k, g[k]) for k in ("osi", "circular_variance", "pinwheel_density",
                                                                 "orientation_smoothness", "orientation_local")]
            rows += [("gratings", m, n, k, v[k]) for n, v in g["sheets"].items()
                     for k in ("osi", "pinwheels", "pinwheel_density", "column_spacing_cells", "orientation_smoothness",
                               "orientation_local")]
        for pair, wl in r.get("wiring", {}).items():
            rows += [("wiring length", m, pair, k, wl[k]) for k in ("length", "null", "ratio", "p_value")]
        for cat, c in r.get("categories", {}).get("by_category", {}).items():
            rows += [(f"category {cat}", m, "mean", k, c.get(k)) for k in keys + ("patches",)]
            rows += [(f"category {cat}", m, n, k, v.get(k)) for n, v in c["sheets"].items()
                     for k in ("morans_i", "p_value", "patches")]
    return rows


def _html(doc: dict, out: Path) -> None:
    from ..io import atomic_write_text, png_tag
    esc = html.escape
    body = [f"<h1>topotorch probe</h1><p>models: {esc(', '.join(doc['models']))}; sheets: {esc(', '.join(doc['sheets']))}; "
            f"{doc['permutations']} shuffled-position permutations per map; smoothing FWHM {doc['fwhm']} cells. "
            "p: one-sided permutation p-value of Moran's I against the same values on shuffled positions (the smoothed "
            "figure against a null smoothed the same way).</p>",
            "<table><tr><th>measure</th><th>model</th><th>sheet</th><th>figure</th><th>value</th></tr>"]
    body += [f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td><td>{esc(d)}</td><td>{_fmt(e)}</td></tr>"
             for a, b, c, d, e in table_rows(doc)]
    body.append("</table>")
    for f in doc["figures"]:
        body.append(f"<h2>{esc(f)}</h2>{png_tag(out / f, f)}")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")
    atomic_write_text(out / "probe.html", f"<!doctype html><html><head><meta charset='utf-8'><title>topotorch probe"
                                          f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
