"""Experiments as data: YAML recipes in ``topotorch/recipes`` run by the runner registered for their ``kind``
(see :mod:`topotorch.experiments`)."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .config import ConfigError, from_dict, load_yaml

__all__ = ["Recipe", "list_recipes", "load_recipe", "run_recipe", "kinds"]


@dataclass
class Recipe:
    name: str
    kind: str
    description: str
    reproduces: str
    config: dict


def kinds() -> dict:
    """Registered recipe kinds: name → (config dataclass, runner)."""
    from . import registry
    registry.load()
    return registry.KINDS


def _recipe_files() -> dict[str, Path]:
    """Recipe YAMLs: the packaged ones and those in folders recipe modules registered (``kind(recipes=...)``)."""
    from . import registry
    registry.load()
    roots = [Path(str(resources.files("topotorch") / "recipes"))] + registry.RECIPE_DIRS
    out = {}
    for root in roots:
        for p in sorted(root.glob("*.yaml")):
            if p.stem in out and out[p.stem] != p:
                raise ConfigError(f"recipe {p.stem!r} is defined twice: {out[p.stem]} and {p}")
            out[p.stem] = p
    return out


def list_recipes() -> list[Recipe]:
    return [load_recipe(n) for n in sorted(_recipe_files())]


def load_recipe(name_or_path: str) -> Recipe:
    """A packaged recipe by name, or a recipe YAML file by path."""
    files = _recipe_files()
    path = files.get(name_or_path)
    if path is None:
        p = Path(name_or_path)
        if p.suffix in (".yaml", ".yml") and p.is_file():
            path = p
        else:
            raise ConfigError(f"unknown recipe {name_or_path!r}; available: {', '.join(sorted(files))} "
                              "(or a path to a .yaml recipe)")
    try:
        d = load_yaml(path.read_text())
    except Exception as e:  # yaml.YAMLError, UnicodeDecodeError
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(d, dict) or "kind" not in d or not isinstance(d.get("config", {}), dict):
        raise ConfigError(f"{path}: a recipe needs 'kind' and a 'config' mapping")
    if d["kind"] not in kinds():
        raise ConfigError(f"{path}: unknown recipe kind {d['kind']!r}; known: {sorted(kinds())}")
    return Recipe(path.stem, d["kind"], d.get("description", ""), d.get("reproduces", ""), dict(d.get("config") or {}))


def recipe_config(name: str, overrides: dict | None = None):
    """The validated config object of recipe ``name`` with ``overrides`` (keys of its config) applied."""
    r = load_recipe(name)
    cfg = dict(r.config)
    cfg.setdefault("recipe", r.name)
    for k, v in (overrides or {}).items():
        if "." in k:
            raise ConfigError(f"nested keys are not used by {r.kind} recipes: {k!r}")
        cfg[k] = v
    return from_dict(kinds()[r.kind][0], cfg)


def run_recipe(name: str, out, overrides: dict | None = None, resume: bool = False,
               progress: bool = True) -> dict:
    """Run recipe ``name`` into ``out`` with ``overrides`` (keys of the recipe's config) applied."""
    cfg = recipe_config(name, overrides)
    return kinds()[load_recipe(name).kind][1](cfg, out, resume=resume, progress=progress)


def run_seeds(name: str, outs: list, overrides: list[dict], root, resume: bool = False, progress: bool = True,
              batched: bool = True) -> tuple[list[dict], str]:
    """Run recipe ``name`` once per ``overrides[i]`` (the same config but the seed) into ``outs[i]``: as one batched
    program of replicas when its kind can (:mod:`topotorch.replicas`; the batch's own log in ``root``), else one
    after another. Returns the metrics and how they ran (``"batched"`` or why not)."""
    from . import registry
    cfgs = [recipe_config(name, o) for o in overrides]
    kind = load_recipe(name).kind
    if batched and len(cfgs) > 1 and batch_refusal(name, cfgs) is None:
        fn = registry.REPLICAS[kind]
        return fn(cfgs, [Path(o) for o in outs], Path(root), resume=resume, progress=progress), "batched"
    why = "batching off" if not batched else "one seed" if len(cfgs) < 2 else batch_refusal(name, cfgs)
    runner = kinds()[kind][1]
    return [runner(c, Path(o), resume=resume, progress=progress) for c, o in zip(cfgs, outs)], why


def batch_refusal(name: str, cfgs: list) -> str | None:
    """Why recipe ``name``'s ``cfgs`` cannot train as one batch of replicas (``None``: they can)."""
    from . import registry
    kind = load_recipe(name).kind
    fn = registry.REPLICAS.get(kind)
    if fn is None:
        return f"recipe kind {kind!r} has no batched trainer"
    check = getattr(fn, "batchable", None)
    return check(cfgs) if check is not None else None
