"""``topotorch reproduce``: run every recipe, compare each published claim with the value measured in this
run, and write ``report.md`` and a self-contained ``report.html`` (figures embedded)."""
from __future__ import annotations

import html
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import registry
from .io import atomic_write_text, png_tag
from .launch import Runs
from .recipes import batch_refusal, load_recipe, recipe_config, run_recipe
from .registry import Claim

__all__ = ["Claim", "claims", "data_claims", "reproduce"]


def claims() -> list[Claim]:
    """Every registered claim (each recipe module registers its own; see :mod:`topotorch.registry`)."""
    registry.load()
    return list(registry.CLAIMS)


RULE = "a claim holds when it holds on a majority of the seeds (more than half)"


def data_claims(data_dir) -> list[Claim]:
    """Claims measured on real data found in ``data_dir`` (what each recipe recognises there: e.g. a text corpus
    ``*.txt`` with ``stimuli/`` and ``blimp/``, MNIST IDX files in ``mnist-t10k/``)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"--data {d}: no such directory")
    registry.load()
    return [c for fn in registry.DATA_CLAIMS for c in fn(d)]


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}


def _fmt(x: float) -> str:
    return f"{x:.2e}" if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4) else f"{x:.3g}"


def fronts(out: Path, quick: bool, seeds: int, data_dir=None, progress: bool = True) -> list[dict]:
    """The task-vs-topography fronts the recipes register (a loss weight from 0 upwards; some only with data in
    ``data_dir``), each a :func:`topotorch.sweep.sweep` over ``seeds`` seeds. Marks the settings whose task figure stays
    within 2 % of the control's."""
    from .sweep import sweep
    registry.load()
    fns = sorted(registry.FRONTS, key=lambda fn: fn.__module__)  # by recipe module, whatever the import order
    specs = [spec for fn in fns for spec in fn(quick, data_dir)]
    result = []
    for name, recipe, grid, fixed, data in specs:
        print(f"front {name}: {grid} × {seeds} seed(s) …", flush=True)
        res = sweep(recipe, grid, fixed, seeds=seeds, out=out / "sweeps" / name, progress=progress)
        ctrl = next(x for x in res["settings"] if x["control"])
        for x in res["settings"]:
            x["within_2pct"] = abs(x["task_mean"] - ctrl["task_mean"]) <= 0.02 * abs(ctrl["task_mean"])
        result.append({"name": name, "data": data, "task": res["task"], "topography": res["topography"],
                       "strength": res["strength"], "settings": res["settings"],
                       "figure": str(Path("sweeps") / name / "sweep.png")})
    return result


def _previous_run_seconds(out: Path, quick: bool) -> dict[str, float]:
    """Seconds per run of each row in ``out/report.json`` when it was written in the same mode, else nothing."""
    try:
        rep = json.loads((out / "report.json").read_text())
        if bool(rep["meta"]["quick"]) != quick:
            return {}
        return {r["recipe"]: r["seconds"] / max(1, len(r["seeds"])) for r in rep["rows"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _typical_run_seconds(quick: bool) -> dict[str, float]:
    """Seconds per run of each row as measured when the package was made (``reproduce_seconds.json``): the order
    to start runs in, not an estimate for this machine."""
    try:
        table = json.loads((Path(__file__).parent / "reproduce_seconds.json").read_text())["seconds"]
        return table["quick" if quick else "full"]
    except (OSError, ValueError, KeyError):
        return {}


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _eta(elapsed: float, left: dict[str, int], known: dict[str, float], done: list[float], jobs: int = 1,
         typical: dict[str, float] | None = None, done_rows: list[str] = ()) -> str:
    """``elapsed m:ss; about m:ss left`` — the runs left times their row's seconds per run (measured this time or
    in the last report here), shared among ``jobs`` workers. Rows not timed yet: their ``typical`` seconds (the
    packaged table) scaled by how this machine compares on the rows done (``done_rows``, one name per ``done``
    entry), else the mean run so far — which the longest-first order would overestimate. Before any run here has
    finished, the packaged times as they are (when they cover every row left)."""
    mean = sum(done) / len(done) if done else None
    pairs = [(typical[r], d) for r, d in zip(done_rows, done) if typical and r in typical]
    scale = sum(d for _, d in pairs) / sum(t for t, _ in pairs) if pairs and sum(t for t, _ in pairs) > 0 else None
    note = ""
    if scale is None and not done and typical and all(name in typical or name in known for name, n in left.items() if n):
        scale, note = 1.0, " (from the packaged run times until runs finish here)"
    per = lambda name: (known[name] if name in known else typical[name] * scale
                        if scale is not None and name in typical else mean)
    if any(per(name) is None for name, n in left.items() if n):
        return f"elapsed {_clock(elapsed)}; time left estimated after the first run"
    rest = sum(n * per(name) for name, n in left.items() if n) / max(1, jobs)
    return f"elapsed {_clock(elapsed)}; about {_clock(rest)} left{note}"


def reproduce(out="reproduce", quick: bool = False, only: list[str] | None = None, progress: bool = True,
              seeds: int | None = None, data_dir=None, sweeps: bool = False, jobs: int = 1, launcher: str = "pool",
              slurm: dict | None = None, batched: bool = True) -> list[dict]:
    """Run the recipes behind :data:`CLAIMS` over ``seeds`` seeds each (default 3 quick, 5 full) into
    ``out/<recipe>/seed-<S>`` and write the report; returns the rows. Seeds start at the recipe's own
    default seed (``S, S+1, …``). ``data_dir`` adds the claims of :func:`data_claims` (real data); ``sweeps``
    adds the task-vs-topography :func:`fronts`. ``jobs`` > 1 runs that many runs at once in worker processes
    (never more threads than cores); ``launcher="slurm"`` submits each run as a Slurm job (:mod:`topotorch.launch`).
    Every run uses one thread, whatever its recipe's ``threads`` (meant for a run alone), and the cores are filled
    with runs instead — two 1-thread runs do 1.4× the work of one 2-thread run on 2 cores (measured on the two
    heaviest 2-thread recipes) —
    so every run is the same as in a serial reproduction, and the report is too (times aside). ``batched``: a row whose
    recipe can train its seeds as one batched program of replicas does so (:mod:`topotorch.replicas`; equal to
    single runs to floating-point tolerance), as one job."""
    seeds = seeds if seeds is not None else (3 if quick else 5)
    if seeds < 1:
        raise ValueError(f"--seeds must be ≥ 1, got {seeds}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.time()
    every = claims() + (data_claims(data_dir) if data_dir else [])
    chosen = [c for c in every if ((c.recipe in only or c.run_as in only) if only else not (quick and c.full_only))]
    if not chosen:
        raise ValueError(f"no recipe matches {only}; recipes: {sorted({c.run_as or c.recipe for c in every})}")
    # seconds per run of each row, from the last report written here in the same mode (refined as runs finish)
    known = _previous_run_seconds(out, quick)
    done: list[float] = []
    left = {(c.run_as or c.recipe): seeds for c in chosen}
    runs = Runs(jobs, launcher, out / "jobs", slurm)
    try:
        plan, groups = {}, []
        for c in chosen:
            base = int(load_recipe(c.recipe).config.get("seed", 0))
            overs = [dict(c.quick if quick else c.overrides, seed=seed) for seed in range(base, base + seeds)]
            dirs = [out / (c.run_as or c.recipe) / f"seed-{seed}" for seed in range(base, base + seeds)]
            if hasattr(recipe_config(c.recipe, overs[0]), "threads"):
                overs = [dict(o, threads=1) for o in overs]
            cfgs = [recipe_config(c.recipe, o) for o in overs]
            plan[id(c)] = (overs, dirs)
            if not batched or batch_refusal(c.recipe, cfgs) is not None:
                continue
            # a row whose seeds batch joins a batch of its recipe's other rows when the configs together still do
            # (sibling rows — a control, an ablation — differ only in what each replica holds for itself)
            for g in groups:
                if g["recipe"] == c.recipe and batch_refusal(c.recipe, g["cfgs"] + cfgs) is None:
                    g["rows"].append(c)
                    g["cfgs"] += cfgs
                    break
            else:
                groups.append({"recipe": c.recipe, "rows": [c], "cfgs": cfgs})
        # queued at once, the longest jobs first (so that no long job starts last, alone; a batch is one job of all
        # its runs); with workers they start as cores free up; collected in the report's order below
        hint = {**_typical_run_seconds(quick), **known}
        batches, queue = {}, []  # batches: a batched row's directory → (its batch's key, its first run's index)
        for g in groups:
            if len(g["cfgs"]) < 2:
                continue
            key = out / (g["rows"][0].run_as or g["rows"][0].recipe)
            dirs, overs = [], []
            for c in g["rows"]:
                batches[out / (c.run_as or c.recipe)] = (key, len(dirs))
                dirs += plan[id(c)][1]
                overs += plan[id(c)][0]
            weight = sum(hint.get(c.run_as or c.recipe, 0.0) * seeds for c in g["rows"])
            queue.append((weight, g["rows"], key, _timed_batch,
                          (g["recipe"], [str(d) for d in dirs], overs, str(key / "replicas"), progress and runs.serial)))
        for c in chosen:
            if out / (c.run_as or c.recipe) not in batches:
                for d, over in zip(plan[id(c)][1], plan[id(c)][0]):
                    queue.append((hint.get(c.run_as or c.recipe, 0.0), [c], d, _timed_run,
                                  (c.recipe, str(d), over, progress and runs.serial)))
        queue.sort(key=lambda j: -j[0])  # stable: equal weights keep the claims' order
        order = []
        for _, rows_, key, fn, args in queue:
            runs.add(key, 1, fn, *args)
            order += [c for c in rows_ if c not in order]
        # collected in the order they started (what the progress lines follow), reported in the claims' order
        got = dict(zip(map(id, order), _collect(order, quick, seeds, out, runs, t0, known, done, left, batches)))
        rows = [got[id(c)] for c in chosen]
    finally:
        runs.close()
    front = fronts(out, quick, min(seeds, 3), data_dir, progress) if sweeps else []
    return _write(out, rows, front, quick, t0, [] if only else [c.run_as or c.recipe for c in every if quick and c.full_only])


def _timed_run(recipe: str, d: str, over: dict, progress: bool) -> tuple[dict, float]:
    """One run (in whatever process executes it): its metrics and its own wall time in seconds."""
    t = time.time()
    m = run_recipe(recipe, Path(d), over, progress=progress)
    return m, time.time() - t


def _timed_batch(recipe: str, dirs: list[str], overs: list[dict], root: str, progress: bool) -> list[tuple[dict, float]]:
    """A row's seeds as one batched program: each run's metrics and its share of the wall time."""
    from .recipes import run_seeds
    t = time.time()
    ms, _ = run_seeds(recipe, [Path(d) for d in dirs], overs, Path(root), progress=progress)
    share = (time.time() - t) / len(ms)
    return [(m, share) for m in ms]


def _collect(chosen, quick, seeds, out, runs, t0, known, done, left, batches=None) -> list[dict]:
    rows, batched, done_rows, typical, batches = [], {}, [], _typical_run_seconds(quick), batches or {}
    jobs = len(runs.waiting) + len(runs.running) + runs.collected
    for k, c in enumerate(chosen, 1):
        name = c.run_as or c.recipe
        base = int(load_recipe(c.recipe).config.get("seed", 0))
        seed_list = [base + i for i in range(seeds)]
        per_seed, figs, row_seconds = [], {}, 0.0
        for seed in seed_list:
            eta = _eta(time.time() - t0, left, known, done, runs.jobs, typical, done_rows)
            print(f"[{k}/{len(chosen)}] {name}, seed {seed} … ({eta})", flush=True)
            tick = None if runs.serial else (lambda name=name: print(
                f"    … waiting for {name} (elapsed {_clock(time.time() - t0)}; {runs.finished()} of {jobs} jobs "
                f"finished)", flush=True))
            if out / name in batches:  # the row's seeds ran in a batch: take this seed's share
                key, first = batches[out / name]
                if key not in batched:
                    batched[key] = runs.result(key, tick)
                m, secs = batched[key][first + seed_list.index(seed)]
            else:
                m, secs = runs.result(out / name / f"seed-{seed}", tick)
            done.append(secs)
            done_rows.append(name)
            row_seconds += secs
            known.setdefault(name, done[-1])
            left[name] -= 1
            ok = bool(c.holds(m))
            per_seed.append({"seed": seed, "holds": ok, "measured": c.measured(m)})
            for key, v in c.figures(m).items():
                figs.setdefault(key, []).append(float(v))
            print(f"    {'holds' if ok else 'does not hold'}: {per_seed[-1]['measured']}", flush=True)
        held = sum(p["holds"] for p in per_seed)
        figures = {key: _summary(v) for key, v in figs.items()}
        measured = "; ".join(f"{key} {_fmt(f['mean'])} ± {_fmt(f['sd'])}" for key, f in figures.items())
        rows.append({"system": c.system, "recipe": name, "data": c.data, "published": c.published, "measured": measured,
                     "seeds": seed_list, "held": held, "holds": 2 * held > len(seed_list), "figures": figures,
                     "per_seed": per_seed, "seconds": round(row_seconds, 1),  # its runs' own times
                     "figure": str(Path(name) / f"seed-{seed_list[0]}" / c.figure)})
        print(f"  {name}: held on {held}/{len(seed_list)} seeds → {'holds' if rows[-1]['holds'] else 'DOES NOT HOLD'}",
              flush=True)
    return rows


def _write(out: Path, rows: list[dict], front: list, quick: bool, t0: float, not_run: list[str]) -> list[dict]:
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": quick, "rule": RULE,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads_per_run": 1, "seconds": round(time.time() - t0, 1), "not_run": not_run}
    atomic_write_text(out / "report.json", json.dumps({"meta": meta, "rows": rows, "fronts": front}, indent=1))
    atomic_write_text(out / "report.md", _markdown(rows, meta, front))
    atomic_write_text(out / "report.html", _html(rows, meta, out, front))
    print(f"{sum(r['holds'] for r in rows)}/{len(rows)} claims hold ({RULE}); wrote {out}/report.md and "
          f"{out}/report.html")
    return rows


def _front_rows(f) -> list[tuple]:
    return [(f"{f['strength']} = {x[f['strength']]}" + (" (control)" if x["control"] else ""),
             f"{_fmt(x['task_mean'])} ± {_fmt(x['task_sd'])}", f"{_fmt(x['topography_mean'])} ± {_fmt(x['topography_sd'])}",
             "yes" if x["within_2pct"] else "no") for x in f["settings"]]


def _markdown(rows, meta, front=()) -> str:
    lines = [f"# topotorch reproduction report{' (quick)' if meta['quick'] else ''}", "",
             f"{meta['date']} · torch {meta['torch']} · Python {meta['python']} · {meta['machine']} · "
             f"{meta['seconds']:.0f} s in all. Every measured value below was computed in this run, as mean ± sd "
             f"over the seeds listed; {meta['rule']}.", "",
             "| system | recipe | data | published claim | measured here (mean ± sd) | seeds | held | holds | time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | `{r['recipe']}` | {r['data']} | {r['published']} | {r['measured']} | "
                     f"{', '.join(map(str, r['seeds']))} | {r['held']}/{len(r['seeds'])} | "
                     f"{'✅ yes' if r['holds'] else '❌ no'} | {r['seconds']:.0f} s |")
    lines += [""]
    if meta.get("not_run"):
        lines += [f"Not run with `--quick` (too long; run in full mode or with `--only`): "
                  f"{', '.join(f'`{n}`' for n in meta['not_run'])}.", ""]
    for r in rows:
        lines += [f"## {r['system']} — `{r['recipe']}`", "", f"Held on {r['held']}/{len(r['seeds'])} seeds.", ""]
        lines += [f"- seed {p['seed']}: {'holds' if p['holds'] else 'does not hold'} — {p['measured']}" for p in r["per_seed"]]
        lines += ["", f"![{r['recipe']}]({r['figure']}) (seed {r['seeds'][0]})", ""]
    if front:
        lines += ["## Topography at what cost: fronts", ""]
    for f in front:
        n = f["settings"][0]["n"]
        lines += [f"### `{f['name']}` ({f['data']}; {n} seed(s) per setting)", "",
                  f"| setting | {f['task']} (mean ± sd) | {f['topography']} (mean ± sd) | task within 2 % of the control |",
                  "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _front_rows(f)]
        lines += ["", f"![{f['name']}]({f['figure']})", ""]
    return "\n".join(lines)


def _html(rows, meta, out: Path, front=()) -> str:
    def img(path):
        return png_tag(out / path, path)
    esc = html.escape
    body = [f"<h1>topotorch reproduction report{' (quick)' if meta['quick'] else ''}</h1>",
            f"<p>{esc(meta['date'])} · torch {esc(meta['torch'])} · Python {esc(meta['python'])} · "
            f"{esc(meta['machine'])} · {meta['seconds']:.0f} s in all. Every measured value was computed in this run, "
            f"as mean ± sd over the seeds listed; {esc(meta['rule'])}.</p>",
            "<table><tr><th>system</th><th>recipe</th><th>data</th><th>published claim</th><th>measured here (mean ± sd)</th>"
            "<th>seeds</th><th>held</th><th>holds</th><th>time</th></tr>"]
    for r in rows:
        body.append(f"<tr><td>{esc(r['system'])}</td><td><code>{esc(r['recipe'])}</code></td><td>{esc(r['data'])}</td>"
                    f"<td>{esc(r['published'])}</td>"
                    f"<td>{esc(r['measured'])}</td><td>{esc(', '.join(map(str, r['seeds'])))}</td>"
                    f"<td>{r['held']}/{len(r['seeds'])}</td><td class='{'ok' if r['holds'] else 'no'}'>"
                    f"{'yes' if r['holds'] else 'no'}</td><td>{r['seconds']:.0f} s</td></tr>")
    body.append("</table>")
    if meta.get("not_run"):
        body.append(f"<p>Not run with <code>--quick</code> (too long; run in full mode or with <code>--only</code>): "
                    f"{esc(', '.join(meta['not_run']))}.</p>")
    for r in rows:
        seeds = "".join(f"<li>seed {p['seed']}: {'holds' if p['holds'] else 'does not hold'} — {esc(p['measured'])}</li>"
                        for p in r["per_seed"])
        body.append(f"<h2>{esc(r['system'])} — <code>{esc(r['recipe'])}</code></h2><p>Held on {r['held']}/"
                    f"{len(r['seeds'])} seeds.</p><ul>{seeds}</ul>{img(r['figure'])}<p>(seed {r['seeds'][0]})</p>")
    if front:
        body.append("<h2>Topography at what cost: fronts</h2>")
    for f in front:
        cells = "".join(f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td><td>{d}</td></tr>" for a, b, c, d in _front_rows(f))
        body.append(f"<h3><code>{esc(f['name'])}</code> ({esc(f['data'])})</h3><table><tr><th>setting</th><th>"
                    f"{esc(f['task'])}</th><th>{esc(f['topography'])}</th><th>task within 2 % of the control</th></tr>"
                    f"{cells}</table>{img(f['figure'])}")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:6px;vertical-align:top}"
             "th{background:#f3f3f3}.ok{color:#11772d;font-weight:bold}.no{color:#b00020;font-weight:bold}"
             "img{max-width:100%;border:1px solid #eee;margin:.5em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>topotorch report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
