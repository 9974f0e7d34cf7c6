"""A recipe is one module plus one YAML: a throwaway recipe outside the package, named in $TOPOTORCH_RECIPES, shows
up in ``run --list``, ``run``, ``reproduce --only``, ``sweep`` and brings its own subcommand — no other file
touched. And the library's reporting modules name no recipe."""
import json
import re
import sys
from pathlib import Path

import pytest

from topotorch import registry
from topotorch.cli import main

MODULE = '''
from dataclasses import dataclass
from pathlib import Path

from topotorch.io import write_json
from topotorch.registry import Claim, claims, command, kind


@dataclass
class Cfg:
    recipe: str = "throwaway"
    seed: int = 0
    steps: int | None = None
    strength: float = 1.0


@kind("throwaway-kind", Cfg, figures=("task", lambda m: m["task"], "topography", lambda m: m["topo"]),
      recipes=Path(__file__).parent)
def run(cfg, out, resume=False, progress=True):
    Path(out).mkdir(parents=True, exist_ok=True)
    m = {"recipe": cfg.recipe, "seed": cfg.seed, "steps": cfg.steps, "task": 1.0 + 0.01 * cfg.seed, "topo": cfg.strength}
    write_json(Path(out) / "metrics.json", m)
    return m


claims(Claim("A throwaway system", "throwaway", "its topography is non-negative", lambda m: f"topo {m['topo']}",
             lambda m: m["topo"] >= 0, "none.png", {}, {}, figures=lambda m: {"topo": m["topo"]}))


@command("throwaway-hello", "say hello", lambda p: p.add_argument("--name", default="world"))
def hello(args):
    print(f"hello {args.name}")
    return 0
'''


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "throwaway_recipe.py").write_text(MODULE)
    (pkg / "throwaway.yaml").write_text("kind: throwaway-kind\ndescription: a recipe added as one module + one YAML\n"
                                        "config:\n  strength: 1.0\n")
    saved = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in
             (("KINDS", registry.KINDS), ("FIGURES", registry.FIGURES), ("CLAIMS", registry.CLAIMS),
              ("COMMANDS", registry.COMMANDS), ("RECIPE_DIRS", registry.RECIPE_DIRS))}
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setenv("TOPOTORCH_RECIPES", "throwaway_recipe")
    yield tmp_path
    sys.modules.pop("throwaway_recipe", None)
    for k, v in saved.items():  # the registry as it was for the other tests
        cur = getattr(registry, k)
        cur.clear()
        cur.update(v) if isinstance(cur, dict) else cur.extend(v)


def test_a_throwaway_recipe_is_one_module_and_one_yaml(throwaway, capsys):
    out = throwaway
    assert main(["run", "--list"]) == 0
    assert "throwaway" in capsys.readouterr().out
    assert main(["run", "throwaway", "--out", str(out / "r"), "--seed", "3", "--quiet"]) == 0
    assert json.loads((out / "r" / "metrics.json").read_text())["seed"] == 3
    assert main(["reproduce", "--only", "throwaway", "--seeds", "2", "--out", str(out / "rep"), "--quiet"]) == 0
    rows = json.loads((out / "rep" / "report.json").read_text())["rows"]
    assert [(r["recipe"], r["held"]) for r in rows] == [("throwaway", 2)]
    assert main(["sweep", "throwaway", "--set", "strength=0,2", "--seeds", "1", "--out", str(out / "sw"), "--quiet"]) == 0
    assert (out / "sw" / "sweep.json").is_file()
    capsys.readouterr()
    assert main(["throwaway-hello", "--name", "recipe"]) == 0
    assert capsys.readouterr().out.strip() == "hello recipe"


def test_a_missing_recipe_module_is_named(monkeypatch, capsys):
    monkeypatch.setenv("TOPOTORCH_RECIPES", "no_such_recipe_module")
    with pytest.raises(ImportError, match="no_such_recipe_module"):
        registry.load()


def test_reporting_modules_name_no_recipe():
    src = Path(registry.__file__).parent
    names = [p.stem for p in (src / "recipes").glob("*.yaml")] + list(registry.KINDS)
    for f in ("report.py", "sweep.py", "cli.py"):
        text = (src / f).read_text()
        found = sorted({n for n in names if re.search(rf"(?<![\\w-]){re.escape(n)}(?![\\w-])", text)})
        assert not found, (f, found)
