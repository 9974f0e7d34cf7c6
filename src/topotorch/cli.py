"""The ``topotorch`` command."""
from __future__ import annotations

import argparse
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
    metrics = run_recipe(args.recipe, out, overrides, resume=args.resume, progress=not args.quiet)
    if not metrics:  # a non-zero DDP rank: rank 0 reports
        return 0
    short = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    print(json.dumps(short, indent=1))
    print(f"wrote {out}/metrics.json")
    return 0


def _cmd_workflow(args) -> int:
    from .experiments import spatialnet as S
    if args.cmd == "record":
        rec = S.record(args.run)
        print(f"recorded {len(rec) // 2} hidden layers → {args.run}/record.safetensors")
    elif args.cmd == "plot":
        for p in S.plot_run(args.run):
            print(f"wrote {p}")
    elif args.cmd == "split":
        a = S.split(args.run, args.method, args.seed)
        sizes = [[int(sum(1 for o in layer if o == t)) for layer in a["layers"]] for t in range(2)]
        print(f"split ({args.method}): neurons per hidden layer for each task {sizes} → {args.run}/split/")
    elif args.cmd == "score":
        print(json.dumps(S.score(args.run), indent=1))
    return 0


def _lm_arms(run):
    """A topolm run directory and the names of its trained arms (a clear error when there is none)."""
    from pathlib import Path
    run = Path(run)
    arms = [a.name for a in sorted(run.iterdir()) if (a / "model.safetensors").is_file()] if run.is_dir() else []
    if not arms:
        raise FileNotFoundError(f"{run}: no arm with a model.safetensors — not a trained topolm run directory")
    return run, arms


def _cmd_blimp(args) -> int:
    from .data import blimp
    from .experiments.topolm import blimp_accuracy, load_arm
    from .io import write_json
    run, arms = _lm_arms(args.run)
    pairs = blimp(args.source, args.phenomena.split(",") if args.phenomena else None)
    res = {}
    for arm in arms:
        cfg, model, _, _ = load_arm(run, arm)
        res[arm] = blimp_accuracy(model, model.config.vocab_size, cfg.block_size, pairs)
        print(f"{arm}: " + ", ".join(f"{k} {v:.3f}" for k, v in res[arm].items()))
    write_json(run / "blimp.json", {"source": str(args.source), "accuracy": res})
    print(f"wrote {run / 'blimp.json'}")
    return 0


def _cmd_stimuli(args) -> int:
    from pathlib import Path

    from .data import stimulus_table
    from .experiments.topolm import load_arm, plot_maps, stimulus_contrast
    from .io import write_json
    run, arms = _lm_arms(args.run)
    if args.contrast.count("-") != 1:
        raise ValueError(f"--contrast is A-B (two condition values), got {args.contrast!r}")
    a, b = args.contrast.split("-")
    path = stimulus_table(args.file)
    out = Path(args.out) if args.out else run / "stimuli"
    out.mkdir(parents=True, exist_ok=True)
    res, layouts = {}, {}
    for arm in arms:
        cfg, model, positions, vocab = load_arm(run, arm)
        res[arm] = stimulus_contrast(model, dict(model.sheets(cfg.sheets)), positions, path, args.text, args.condition,
                                     a, b, vocab, cfg.block_size, args.smooth, seed=cfg.seed)
        layouts[arm] = positions
        print(f"{arm}: Moran's I {res[arm]['morans_i']:.3f} (shuffled {res[arm]['morans_i_null']:.3f}), smoothed "
              f"{res[arm]['morans_i_smoothed']:.3f} (shuffled {res[arm]['morans_i_smoothed_null']:.3f}), "
              f"{res[arm]['significant_units']:.1f} significant units per sheet")
    plot_maps(res, layouts, out / f"tmaps_{a}-{b}.png", title=f"{Path(path).name}: {a} − {b} Welch t")
    write_json(out / "stimuli.json", {"file": str(path), "text": args.text, "condition": args.condition,
                                      "contrast": args.contrast, "fwhm": args.smooth, "arms": res})
    print(f"wrote {out / 'stimuli.json'}")
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import parse_grid, sweep
    grid, fixed = parse_grid(args.set)
    sweep(args.recipe, grid, fixed, seeds=args.seeds, out=args.out or f"sweeps/{args.recipe}",
          progress=not args.quiet, strength=args.strength)
    return 0


def _cmd_reproduce(args) -> int:
    from .report import reproduce
    rows = reproduce(args.out, quick=args.quick, only=args.only.split(",") if args.only else None,
                     progress=not args.quiet, seeds=args.seeds, data_dir=args.data, sweeps=args.sweeps)
    return 0 if all(r["holds"] for r in rows) else 1


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
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    rp = sub.add_parser("reproduce", help="run every recipe and write report.md / report.html")
    rp.add_argument("--quick", action="store_true", help="quick variants (a few minutes on a 2-core CPU)")
    rp.add_argument("--out", default="reproduce", help="output directory (default: reproduce)")
    rp.add_argument("--only", help="comma-separated recipes to run (default: all)")
    rp.add_argument("--seeds", type=int, help="seeds per claim (default: 3 with --quick, 5 otherwise)")
    rp.add_argument("--sweeps", action="store_true", help="add the task-vs-topography fronts (TDANN α; TopoLM α "
                                                          "on text with --data), at most 3 seeds per setting")
    rp.add_argument("--data", help="a folder of real data (a .txt corpus, stimuli/, blimp/, mnist-t10k/): adds "
                                   "the claims measured on it, e.g. --data ../shared/data")
    rp.add_argument("--quiet", action="store_true", help="no progress bars")
    b = sub.add_parser("blimp", help="BLiMP minimal-pair accuracy of every arm of a byte-level topolm run")
    b.add_argument("run", help="topolm run directory (trained with --set data=FILE)")
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
    st = sub.add_parser("stimuli", help="probe every arm of a topolm run with a stimulus table (TopoLM's protocol)")
    st.add_argument("run", help="topolm run directory")
    st.add_argument("--file", required=True, help="CSV table, or fedorenko / elli (TopoLM's, downloaded and cached)")
    st.add_argument("--text", required=True, help="column holding the stimulus text")
    st.add_argument("--condition", required=True, help="column holding the condition")
    st.add_argument("--contrast", required=True, help="A-B: the two conditions compared (e.g. S-N, noun-verb)")
    st.add_argument("--smooth", type=float, default=2.0, help="Gaussian FWHM in cells (TopoLM: 2; 0: none)")
    st.add_argument("--out", help="output directory (default RUN/stimuli)")
    for name, text in (("record", "per-task mean |activation| and variance of every neuron of a run"),
                       ("plot", "neuron positions coloured by task preference; per-task specificity maps"),
                       ("split", "assign neurons to tasks and write one task-specific model per task"),
                       ("score", "per-task accuracy of the full model and of each split model")):
        w = sub.add_parser(name, help=text)
        w.add_argument("run", help="run directory of a spatial network (e.g. runs/spatial-two-task/spatial)")
        if name == "split":
            w.add_argument("--method", choices=["greedy", "probability"], default="greedy")
            w.add_argument("--seed", type=int, default=0, help="seed of the probability method")
    args = p.parse_args(argv)
    try:
        handler = {"run": _cmd_run, "reproduce": _cmd_reproduce, "blimp": _cmd_blimp, "stimuli": _cmd_stimuli,
                   "sweep": _cmd_sweep}.get(args.cmd, _cmd_workflow)
        rc = handler(args)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError, ImportError) as e:
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
