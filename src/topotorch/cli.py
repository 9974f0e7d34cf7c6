"""The ``topotorch`` command."""
from __future__ import annotations

import argparse
from pathlib import Path
import json
import os
import sys

from .io import CheckpointError
from .config import ConfigError, parse_sets

__all__ = ["main"]


def _cmd_run(args) -> int:
    from .recipes import list_recipes, run_recipe
    if args.list or not args.recipe:
        for r in list_recipes():
            print(f"{r.name:20s} {r.description}")
            if r.reproduces:
                print(f"{'':20s}   reproduces: {r.reproduces}")
        return 0 if args.list else 2
    overrides = parse_sets(args.set)
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.seed is not None:
        overrides["seed"] = args.seed
    out = args.out or f"runs/{args.recipe}"
    if args.seeds is not None:
        return _run_seeds(args, overrides, Path(out))
    metrics = run_recipe(args.recipe, out, overrides, resume=args.resume, progress=not args.quiet)
    if not metrics:  # a non-zero DDP rank: rank 0 reports
        return 0
    short = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    print(json.dumps(short, indent=1))
    print(f"wrote {out}/metrics.json")
    return 0


def _run_seeds(args, overrides: dict, out) -> int:
    """``run RECIPE --seeds N``: seeds S…S+N−1 into OUT/seed-S, batched as replicas where the recipe can."""
    from .recipes import load_recipe, run_seeds
    if args.seeds < 1:
        raise ValueError(f"--seeds must be ≥ 1, got {args.seeds}")
    base = int(overrides.get("seed", load_recipe(args.recipe).config.get("seed", 0)))
    seeds = list(range(base, base + args.seeds))
    outs = [out / f"seed-{s}" for s in seeds]
    ms, how = run_seeds(args.recipe, outs, [dict(overrides, seed=s) for s in seeds], out / "replicas",
                        resume=args.resume, progress=not args.quiet, batched=not args.one_by_one)
    print(f"{len(seeds)} seeds ({'one batched program' if how == 'batched' else 'one at a time: ' + how}):")
    for s, o, m in zip(seeds, outs, ms):
        short = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        print(f"  seed {s}: {o}/metrics.json  " + ", ".join(f"{k} {v:.4g}" for k, v in list(short.items())[:6]))
    return 0


def _language_run(run):
    """The subjects of a run directory, which must hold a language model (a clear error otherwise)."""
    from . import registry
    registry.load()  # recipes register their run loaders
    from .probe.load import load_subjects
    subs = load_subjects(str(run))
    if not all(s.language for s in subs):
        raise ValueError(f"{run}: not a language-model run (use topotorch probe for image models)")
    return subs


def _cmd_blimp(args) -> int:
    """``topotorch blimp RUN``: ``topotorch probe RUN --blimp`` for every arm, written as ``RUN/blimp.json``."""
    from pathlib import Path

    from .data import blimp
    from .io import write_json
    from .probe.run import Protocol, language_report
    subs = _language_run(args.run)
    pairs = blimp(args.source, args.phenomena.split(",") if args.phenomena else None)
    res = {}
    for sub in subs:
        res[sub.name] = language_report(sub, Protocol(blimp=pairs))["blimp"]
        print(f"{sub.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in res[sub.name].items()))
    write_json(Path(args.run) / "blimp.json", {"source": str(args.source), "accuracy": res})
    print(f"wrote {Path(args.run) / 'blimp.json'}")
    return 0


def _cmd_stimuli(args) -> int:
    """``topotorch stimuli RUN``: ``topotorch probe RUN --stimuli`` for every arm, written as ``stimuli.json``."""
    from pathlib import Path

    from .data import stimulus_table
    from .io import write_json
    from .probe.plots import plot_maps
    from .probe.run import Protocol, language_report
    if args.contrast.count("-") != 1:
        raise ValueError(f"--contrast is A-B (two condition values), got {args.contrast!r}")
    subs = _language_run(args.run)
    path = stimulus_table(args.file)
    proto = Protocol(stimuli=[(path, args.text, args.condition, args.contrast)], fwhm=args.smooth or None,
                     permutations=args.permutations)
    res = {sub.name: language_report(sub, proto)["stimuli"][args.contrast] for sub in subs}
    for arm, r in res.items():
        print(f"{arm}: Moran's I {r['morans_i']:.3f} (shuffled {r['morans_i_null']:.3f}, p {r['p_value']:.3f}), "
              f"smoothed {_num(r['morans_i_smoothed'])} (shuffled {_num(r['morans_i_smoothed_null'])}), "
              f"{r['significant_units']:.1f} significant units per sheet")
    out = Path(args.out) if args.out else Path(args.run) / "stimuli"
    out.mkdir(parents=True, exist_ok=True)
    lays = {s.name: {sh.name: sh.layout for sh in s.sheets} for s in subs}
    plot_maps({arm: {n: (v["t_map"], lays[arm][n], f"Moran's I {v['morans_i']:.2f}") for n, v in r["sheets"].items()}
               for arm, r in res.items()}, out / f"tmaps_{args.contrast}.png",
              f"{Path(path).name}: {args.contrast} Welch t")
    write_json(out / "stimuli.json", {"file": str(path), "text": args.text, "condition": args.condition,
                                      "contrast": args.contrast, "fwhm": args.smooth, "arms": res})
    print(f"wrote {out / 'stimuli.json'}")
    return 0


def _num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _shape(text):
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input-shape is C,H,W (three positive integers), got {text!r}")
    return shape


def _pair(text: str) -> tuple[str, str]:
    if text.count(":") != 1 or not all(text.split(":")):
        raise ValueError(f"--wiring takes A:B (two sheet names), got {text!r}")
    a, b = text.split(":")
    return a, b


def _cmd_probe(args) -> int:
    """``topotorch probe MODEL``: see ``topotorch probe --help``."""
    from pathlib import Path

    from . import registry
    registry.load()  # recipes register their run loaders
    from .data import blimp, stimulus_table
    from .probe.load import load_subjects
    from .probe.run import Protocol, probe
    if args.stimuli and not (args.text and args.condition and args.contrast):
        raise ValueError("--stimuli needs --text COL, --condition COL and --contrast A-B")
    if args.contrast and (args.contrast.count("-") != 1 or not all(args.contrast.split("-"))):
        raise ValueError(f"--contrast is A-B (two condition values), got {args.contrast!r}")
    if args.permutations < 1:
        raise ValueError(f"--permutations must be ≥ 1, got {args.permutations}")
    shape = _shape(args.input_shape)
    subs = load_subjects(args.model, "model", args.sheets, args.layout, args.units, args.tokenizer, shape)
    if args.control:
        ctrl = load_subjects(args.control, "control", args.sheets, args.layout, args.units, args.tokenizer, shape,
                             reference=subs[0].sheets)
        subs = [subs[0], ctrl[-1]]  # a two-arm run given as control: its control arm
    proto = Protocol(stimuli=[(stimulus_table(args.stimuli), args.text, args.condition, args.contrast)] if args.stimuli else [],
                     blimp=blimp(args.blimp, args.phenomena.split(",") if args.phenomena else None) if args.blimp else None,
                     gratings=args.gratings, categories=args.categories, per_category=args.per_category,
                     wiring=[_pair(w) for w in args.wiring],
                     fwhm=args.smooth or None, permutations=args.permutations, seed=args.seed)
    out = Path(args.out)
    doc = probe(subs, proto, out)
    for m, r in doc["results"].items():
        for con, c in r.get("stimuli", {}).items():
            print(f"{m} {con}: Moran's I {c['morans_i']:.3f} (null {c['morans_i_null']:.3f}, p {c['p_value']:.4f}); "
                  f"smoothed {_num(c['morans_i_smoothed'])} (null {_num(c['morans_i_smoothed_null'])})")
        if "blimp" in r:
            print(f"{m} BLiMP: mean {r['blimp']['mean']:.3f}")
        if "gratings" in r:
            g = r["gratings"]
            print(f"{m} gratings: OSI {_num(g['osi'])}, pinwheels/Λ² {_num(g['pinwheel_density'])}, orientation "
                  f"smoothness {_num(g['orientation_smoothness'])}")
        for pair, wl in r.get("wiring", {}).items():
            print(f"{m} wiring {pair}: length {wl['length']:.3f} vs {wl['null']:.3f} shuffled (ratio {wl['ratio']:.3f}, "
                  f"p {wl['p_value']:.3f})")
        for cat, c in r.get("categories", {}).get("by_category", {}).items():
            print(f"{m} category {cat}: Moran's I {c['morans_i']:.3f} (null {c['morans_i_null']:.3f}, p "
                  f"{c['p_value']:.4f}), {c['patches']:.1f} patches per sheet")
    print(f"wrote {out / 'probe.json'}, {out / 'probe.html'}")
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import parse_grid, sweep
    grid, fixed = parse_grid(args.set)
    from .launch import parse_slurm
    sweep(args.recipe, grid, fixed, seeds=args.seeds, out=args.out or f"sweeps/{args.recipe}",
          progress=not args.quiet, strength=args.strength, jobs=args.jobs if args.jobs is not None else 1, launcher=args.launcher,
          slurm=parse_slurm(args.slurm), batched=not args.one_by_one)
    return 0


def _cmd_reproduce(args) -> int:
    from .report import reproduce
    from .launch import parse_slurm
    rows = reproduce(args.out, quick=args.quick, only=args.only.split(",") if args.only else None,
                     progress=not args.quiet, seeds=args.seeds, data_dir=args.data, sweeps=args.sweeps,
                     jobs=args.jobs if args.jobs is not None else (os.cpu_count() or 1) if args.launcher == "pool" else 1,
                     launcher=args.launcher, slurm=parse_slurm(args.slurm), batched=not args.one_by_one)
    return 0 if all(r["holds"] for r in rows) else 1


def _cmd_draw(args) -> int:
    from . import metrics as M
    from .graph import from_state_dict
    from .io import read_state
    from .plot import draw_network
    from pathlib import Path
    path = Path(args.weights)
    g = from_state_dict(read_state(path))
    out = Path(args.out) if args.out else path.with_name("network.png")
    draw_network(g, out, title=path.name)
    q, _ = M.modularity(g, 0.0, "louvain", seed=0)
    print(f"{out}: layers {g.shape}, wiring length {M.wiring_length(g, 0.0):.4g}, Newman's Q (Louvain) {q:.3f}")
    return 0


def _launch_arguments(p, what: str, default_jobs: str = "1") -> None:
    from .launch import LAUNCHERS
    p.add_argument("--jobs", type=int, default=None, help=f"{what} at once in worker processes (default "
                   f"{default_jobs}), never more threads than cores; with a cluster launcher: the most jobs running at once")
    p.add_argument("--launcher", default="pool", choices=LAUNCHERS,
                   help=f"pool: worker processes here; slurm: each of the {what} a Slurm job through submitit (logs "
                        "in OUT/jobs; rerun the command to collect or continue); submitit-local: the same path on "
                        "this machine")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit parameter for --launcher slurm, e.g. slurm_partition=gpu, timeout_min=120, "
                        "slurm_gres=gpu:1 (repeatable)")


def _one_line(e: BaseException) -> str:
    """An error message on one line (YAML and JSON errors span several)."""
    return " ".join(str(e).split())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="topotorch", description="Spatially embedded neural networks.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a recipe (an experiment config) into a run directory")
    r.add_argument("recipe", nargs="?", help="recipe name (see --list) or path to a recipe .yaml")
    r.add_argument("--list", action="store_true", help="list the recipes and what they reproduce")
    r.add_argument("--out", help="run directory (default runs/RECIPE)")
    r.add_argument("--steps", type=int, help="training steps")
    r.add_argument("--seed", type=int, help="random seed")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set variant=none (repeatable)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    r.add_argument("--seeds", type=int, help="run N seeds (from --seed or the recipe's) into OUT/seed-S, as one "
                                             "batched program of replicas where the recipe can (small BIMT MLPs)")
    r.add_argument("--one-by-one", action="store_true", help="with --seeds: never batch, one seed after another")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    rp = sub.add_parser("reproduce", help="run every recipe and write report.md / report.html")
    rp.add_argument("--quick", action="store_true", help="quick variants (a few minutes on a 2-core CPU)")
    rp.add_argument("--out", default="reproduce", help="output directory (default: reproduce)")
    rp.add_argument("--only", help="comma-separated recipes to run (default: all)")
    rp.add_argument("--seeds", type=int, help="seeds per claim (default: 3 with --quick, 5 otherwise)")
    rp.add_argument("--sweeps", action="store_true", help="add the task-vs-topography fronts the recipes define "
                                                          "(loss weight from 0; some need --data), ≤ 3 seeds per setting")
    rp.add_argument("--data", help="a folder of real data (a .txt corpus, stimuli/, blimp/, mnist-t10k/): adds "
                                   "the claims measured on it, e.g. --data ../shared/data")
    rp.add_argument("--quiet", action="store_true", help="no progress bars")
    _launch_arguments(rp, "runs", "the number of cores")
    rp.add_argument("--one-by-one", action="store_true", help="never batch a row's seeds as replicas")
    b = sub.add_parser("blimp", help="BLiMP minimal-pair accuracy of every arm of a language-model run (= probe --blimp)")
    b.add_argument("run", help="run directory of a language model (byte-level or with its tokenizer)")
    b.add_argument("--source", default="nyu-mll/blimp", help="folder of BLiMP .jsonl files, or the hub dataset")
    b.add_argument("--phenomena", help="comma-separated phenomena (default: every file in the folder)")
    sw = sub.add_parser("sweep", help="a recipe over a grid of settings × seeds: the task-vs-topography front")
    sw.add_argument("recipe")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2,…",
                    help="a key to sweep (several values) or to fix (one value); repeatable")
    sw.add_argument("--seeds", type=int, default=2, help="seeds per setting (default 2)")
    sw.add_argument("--strength", help="the grid key whose 0 is the control (default: the first swept key)")
    sw.add_argument("--out", help="sweep directory (default sweeps/RECIPE); rerun to continue an interrupted sweep")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    _launch_arguments(sw, "cells")
    sw.add_argument("--one-by-one", action="store_true", help="never batch a setting's seeds as replicas")
    st = sub.add_parser("stimuli", help="every arm of a language-model run on a stimulus table (= probe --stimuli)")
    st.add_argument("run", help="run directory of a language model")
    st.add_argument("--file", required=True, help="CSV table, or fedorenko / elli (TopoLM's, downloaded and cached)")
    st.add_argument("--text", required=True, help="column holding the stimulus text")
    st.add_argument("--condition", required=True, help="column holding the condition")
    st.add_argument("--contrast", required=True, help="A-B: the two conditions compared (e.g. S-N, noun-verb)")
    st.add_argument("--smooth", type=float, default=2.0, help="Gaussian FWHM in cells (TopoLM: 2; 0: none)")
    st.add_argument("--out", help="output directory (default RUN/stimuli)")
    st.add_argument("--permutations", type=int, default=999, help="shuffled-position permutations per map")
    pr = sub.add_parser("probe", help="measure topography on any model: language stimuli and BLiMP, or gratings "
                                      "(orientation maps, pinwheels) and category selectivity, vs shuffled positions")
    pr.add_argument("model", help="a run directory of ours, a HuggingFace model folder, or module:function (also "
                                  "file.py:function) returning (model, topography[, info dict])")
    pr.add_argument("--out", required=True, help="output directory: probe.json, maps (PNG), probe.html")
    pr.add_argument("--control", help="a control model (same forms as MODEL), probed side by side; without positions "
                                      "of its own it gets the model's")
    pr.add_argument("--sheets", nargs="+", metavar="PATTERN", help="module paths or globs to read on a model that "
                                                                   "carries no positions (default: the saved ones)")
    pr.add_argument("--layout", default="grid", choices=["grid", "retinotopic"], help="positions for --sheets")
    pr.add_argument("--units", default="channels", choices=["channels", "locations"],
                    help="units of conv sheets named by --sheets (locations: TDANN's retinotopic units)")
    pr.add_argument("--stimuli", help="CSV stimulus table (or fedorenko / elli: TopoLM's, downloaded and cached)")
    pr.add_argument("--text", help="column holding the stimulus text")
    pr.add_argument("--condition", help="column holding the condition")
    pr.add_argument("--contrast", help="A-B: the two conditions compared (e.g. S-N, noun-verb)")
    pr.add_argument("--smooth", type=float, default=2.0, help="Gaussian FWHM in cells for the smoothed maps (0: none)")
    pr.add_argument("--blimp", help="folder of BLiMP .jsonl files (or the hub dataset nyu-mll/blimp)")
    pr.add_argument("--phenomena", help="comma-separated BLiMP phenomena (default: all in the folder)")
    pr.add_argument("--tokenizer", help="bytes | byt5 | a tokenizer folder (default: the one saved with the model)")
    pr.add_argument("--gratings", action="store_true", help="orientation maps, OSI, pinwheel density from sine gratings")
    pr.add_argument("--categories", help="category selectivity: lfw | digits | mnist:DIR | a folder of category folders")
    pr.add_argument("--per-category", type=int, default=100, help="images per category (default 100)")
    pr.add_argument("--input-shape", help="C,H,W of an image model's input (our runs know it)")
    pr.add_argument("--wiring", nargs="+", metavar="A:B", default=[],
                    help="wiring length of the weights by which sheet B reads sheet A (directly or pooled), vs shuffled")
    pr.add_argument("--permutations", type=int, default=999, help="shuffled-position permutations per map (default 999)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the permutations and samples")
    dr = sub.add_parser("draw", help="draw a BIMT network from its model.safetensors alone (positions, weights, "
                                     "permutations are all in the file)")
    dr.add_argument("weights", help="a .safetensors file of a model embedded with topotorch.embed (a BIMT run's model)")
    dr.add_argument("--out", help="PNG to write (default: network.png beside the weights)")
    from . import registry
    registry.load()
    for name, (text, add_arguments, _) in registry.COMMANDS.items():  # subcommands that recipes bring
        add_arguments(sub.add_parser(name, help=text))
    args = p.parse_args(argv)
    try:
        handler = {"run": _cmd_run, "reproduce": _cmd_reproduce, "blimp": _cmd_blimp, "stimuli": _cmd_stimuli,
                   "probe": _cmd_probe, "sweep": _cmd_sweep, "draw": _cmd_draw}.get(args.cmd) or registry.COMMANDS[args.cmd][2]
        rc = handler(args)
    except (ConfigError, CheckpointError, ValueError, OSError, ImportError) as e:
        print(f"topotorch: error: {_one_line(e)}", file=sys.stderr)
        rc = 2
    except RuntimeError as e:  # e.g. TrainingDiverged
        print(f"topotorch: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        rc = 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, skip interpreter teardown: DDP keeps the gloo process group alive past
        # destroy_process_group (torch leaks it through the reducer), and a gloo worker thread that drops
        # a finished collective's Python tensor during Py_Finalize aborts the rank ("terminate called
        # without an active exception"). Every output is written atomically and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
