"""The ``topotorch`` command."""
from __future__ import annotations

import argparse
import json
import sys

from .checkpoint import CheckpointError
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
    short = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    print(json.dumps(short, indent=1))
    print(f"wrote {out}/metrics.json")
    return 0


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
    args = p.parse_args(argv)
    try:
        return {"run": _cmd_run}[args.cmd](args)
    except (ConfigError, CheckpointError, ValueError) as e:
        print(f"topotorch: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. TrainingDiverged
        print(f"topotorch: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
