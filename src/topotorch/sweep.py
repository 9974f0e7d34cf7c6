"""``topotorch sweep``: a recipe over a grid of settings × seeds, and the task-vs-topography front.

Each cell (one setting, one seed) is an ordinary run directory under ``out/``; a cell whose ``metrics.json``
exists is read, not rerun, and one with checkpoints but no metrics is resumed, so an interrupted sweep is
continued by running the same command again. ``sweep.json``, ``sweep.csv`` and ``sweep.png`` (task figure
against topography figure, one point per run, mean ± sd per setting, the strength-0 control marked) are
written at the end.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .config import ConfigError, load_yaml
from .io import atomic_write_text, read_json, write_json
from . import registry
from .launch import Runs, run_batch, run_cell
from .recipes import batch_refusal, load_recipe, recipe_config

__all__ = ["FIGURES", "parse_grid", "sweep"]


# recipe kind → (task figure label, extractor, topography/modularity label, extractor): registered by each
# recipe module (``kind(..., figures=...)``); filled by ``registry.load()``
FIGURES: dict[str, tuple[str, Callable, str, Callable]] = registry.FIGURES


def _split_values(text: str) -> list[str]:
    """``"0,0.5,[1, 2]"`` → ``["0", "0.5", "[1, 2]"]``: commas inside brackets do not split."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def parse_grid(items: list[str]) -> tuple[dict, dict]:
    """``["alpha=0,0.5", "data=x.txt"]`` → (grid ``{"alpha": [0, 0.5]}``, fixed ``{"data": "x.txt"}``)."""
    grid, fixed = {}, {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value[,value…], got {item!r}")
        k, v = item.split("=", 1)
        vals = [load_yaml(x) if x.strip() else "" for x in _split_values(v)]
        (grid if len(vals) > 1 else fixed)[k.strip()] = vals if len(vals) > 1 else vals[0]
    return grid, fixed


def _setting_name(params: dict) -> str:
    parts = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items()]
    return "_".join(p.replace("/", "-").replace(" ", "") for p in parts)


def _cell_name(params: dict, seed: int) -> str:
    return f"{_setting_name(params)}_seed={seed}"


def _collect(cells, out, runs, task_fn, topo_fn, task_label, topo_label, in_batch=None):
    """The cells' rows in order, each read from its finished directory or collected from its run (or its batch:
    ``in_batch`` maps a cell directory to ``(batch key, index)``)."""
    rows, t0, ran, topo_label_used, got = [], time.time(), 0, topo_label, {}
    for i, (params, seed) in enumerate(cells, 1):
        d = out / _cell_name(params, seed)
        if (d / "metrics.json").is_file() and d not in (in_batch or {}):
            m, how = read_json(d / "metrics.json", "run metrics"), "done before"
        elif d in (in_batch or {}):
            key, k = in_batch[d]
            if key not in got:
                got[key] = runs.result(key)
            m, how = got[key][k], "ran as a batch of replicas"
            ran += 1
        else:
            resume = (d / "checkpoints").is_dir() or any(d.glob("*/checkpoints"))
            m = runs.result(d)
            ran += 1
            how = "resumed" if resume else "ran"
        label, topo = topo_fn(m) if topo_label is None else (topo_label, topo_fn(m))
        rows.append({**params, "seed": seed, "task": float(task_fn(m)), "topography": float(topo),
                     "run": d.name})
        left = len(cells) - i
        eta = (time.time() - t0) / max(ran, 1) * left if ran else 0.0
        print(f"[{i}/{len(cells)}] {d.name}: {how}; {task_label} {rows[-1]['task']:.4g}, {label} "
              f"{rows[-1]['topography']:.3g}" + (f"; ETA {eta / 60:.1f} min" if left else ""), flush=True)
        topo_label_used = label
    return rows, topo_label_used


BATCH_CAP = 20  # replicas per batch: 20 seeds of a small BIMT MLP train in 2.3× one run's time (benchmarks/seeds.py)


def _batches(recipe: str, settings: list[dict], fixed: dict, base: int, seeds: int, out: Path) -> list[list[tuple]]:
    """The unfinished cells ``(setting, seed)`` that train as batches of replicas: consecutive settings join one
    batch while the recipe can train them together and it holds at most :data:`BATCH_CAP` (a setting's seeds stay
    together). The grouping depends on the grid and on which cells are done, never on ``jobs`` or the launcher, so a
    parallel sweep trains exactly what a serial one does."""
    cfg = lambda p, s: recipe_config(recipe, {**fixed, **p, "seed": s})
    groups = []
    for p in settings:
        todo = [(p, base + k) for k in range(seeds) if not (out / _cell_name(p, base + k) / "metrics.json").is_file()]
        if not todo:
            continue
        if (groups and groups[-1] is not None and len(groups[-1]) + len(todo) <= BATCH_CAP
                and batch_refusal(recipe, [cfg(q, s) for q, s in groups[-1] + todo]) is None):
            groups[-1] += todo
        elif batch_refusal(recipe, [cfg(q, s) for q, s in todo]) is None:
            groups.append(todo)
        else:
            groups.append(None)  # runs cell by cell; the next setting starts a new batch
    return [g for g in groups if g is not None and len(g) > 1]


def sweep(recipe: str, grid: dict, fixed: dict | None = None, seeds: int = 2, out=None, progress: bool = True,
          strength: str | None = None, jobs: int = 1, launcher: str = "pool", slurm: dict | None = None,
          batched: bool = True) -> dict:
    """Run ``recipe`` for every combination of ``grid`` × ``seeds`` seeds (from the recipe's default seed);
    returns the ``sweep.json`` content. ``strength`` names the grid key whose 0 is the control (default: the
    first grid key). ``jobs`` > 1 runs that many cells at once in worker processes (spawned; each cell is the
    same run as in a serial sweep, so ``sweep.json`` is the same), never more threads than the machine's cores;
    ``launcher="slurm"`` submits each cell as a Slurm job through submitit (``slurm``: its parameters, e.g.
    ``{"slurm_partition": "gpu"}``), collected through the cell directories (see :mod:`topotorch.launch`).
    ``batched``: unfinished cells train as batched programs of replicas where the recipe can — a setting's seeds, and
    consecutive settings that batch together (a λ grid of a BIMT recipe), up to :data:`BATCH_CAP` replicas each
    (:mod:`topotorch.replicas`; equal to single runs to floating-point tolerance), one job per batch."""
    r = load_recipe(recipe)
    registry.load()
    if r.kind not in FIGURES:
        raise ConfigError(f"no sweep figures for recipe kind {r.kind!r}")
    if not grid:
        raise ConfigError("give at least one --set KEY=V1,V2,… to sweep")
    if seeds < 1:
        raise ConfigError(f"--seeds must be ≥ 1, got {seeds}")
    fixed = dict(fixed or {})
    strength = strength or next(iter(grid))
    out = Path(out or f"sweeps/{recipe}")
    out.mkdir(parents=True, exist_ok=True)
    base = int({**r.config, **fixed}.get("seed", 0))
    settings = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    cells = [(p, base + k) for p in settings for k in range(seeds)]
    task_label, task_fn, topo_label, topo_fn = FIGURES[r.kind]
    runs = Runs(jobs, launcher, out / "jobs", slurm)
    in_batch = {}
    try:
        for group in _batches(recipe, settings, fixed, base, seeds, out) if batched else ():
            todo = [(s, out / _cell_name(p, s)) for p, s in group]
            overs = [{**fixed, **p, "seed": s} for p, s in group]
            first, last = _setting_name(group[0][0]), _setting_name(group[-1][0])
            root = out / ((first if first == last else f"{first}..{last}") + "_replicas")
            resume = (root / "checkpoints").is_dir()
            key = str(root)
            runs.add(key, getattr(recipe_config(recipe, overs[0]), "threads", 1), run_batch, recipe,
                     [str(d) for _, d in todo], overs, str(root), resume, progress and runs.serial)
            in_batch.update({d: (key, k) for k, (_, d) in enumerate(todo)})
        for params, seed in cells:  # every other cell not finished before, queued at once
            d = out / _cell_name(params, seed)
            if not (d / "metrics.json").is_file() and d not in in_batch:
                over = {**fixed, **params, "seed": seed}
                resume = (d / "checkpoints").is_dir() or any(d.glob("*/checkpoints"))
                runs.add(d, getattr(recipe_config(recipe, over), 'threads', 1), run_cell, recipe, str(d), over, resume,
                         progress and runs.serial)
        rows, topo_label_used = _collect(cells, out, runs, task_fn, topo_fn, task_label, topo_label, in_batch)
    finally:
        runs.close()
    summary = []
    for p in settings:
        sel = [x for x in rows if all(x[k] == v for k, v in p.items())]
        t, g = np.array([x["task"] for x in sel]), np.array([x["topography"] for x in sel])
        summary.append({**p, "n": len(sel), "task_mean": float(t.mean()), "task_sd": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
                        "topography_mean": float(g.mean()), "topography_sd": float(g.std(ddof=1)) if len(g) > 1 else 0.0,
                        "control": p.get(strength) == 0})
    result = {"recipe": recipe, "grid": grid, "fixed": fixed, "seeds": seeds, "strength": strength,
              "task": task_label, "topography": topo_label_used, "runs": rows, "settings": summary}
    write_json(out / "sweep.json", result)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    _plot(result, out / "sweep.png")
    print(f"wrote {out}/sweep.json, sweep.csv, sweep.png")
    return result


def _plot(res: dict, path) -> None:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    keys = list(res["grid"])
    for k, s in enumerate(res["settings"]):
        name = ", ".join(f"{key}={s[key]}" for key in keys)
        pts = [x for x in res["runs"] if all(x[key] == s[key] for key in keys)]
        color = "black" if s["control"] else f"C{k % 10}"
        ax.scatter([x["topography"] for x in pts], [x["task"] for x in pts], color=color, alpha=0.45, s=18)
        ax.errorbar(s["topography_mean"], s["task_mean"], xerr=s["topography_sd"], yerr=s["task_sd"], fmt="D" if s["control"] else "o",
                    color=color, ms=7, capsize=3, label=name + (" (control)" if s["control"] else ""))
    ax.set_xlabel(res["topography"])
    ax.set_ylabel(res["task"])
    ax.set_title(f"{res['recipe']}: task vs topography, {res['seeds']} seed(s) per setting (mean ± sd)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
