"""What ``topotorch probe MODEL`` accepts: a run directory of ours, a HuggingFace model folder, or
``module:function`` (also ``path/to/file.py:function``) returning ``(model, topography)`` — optionally a third
item, a dict with ``tokenizer``, ``block_size``, ``input_shape``, ``transform``.

Recipes register how to load their run directories (``register_run_loader``), so this module names none.
"""
from __future__ import annotations

from ..layout import positions_of

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from .run import Subject
from .sheets import Sheet, find_sheets, saved_positions

__all__ = ["register_run_loader", "load_subjects", "hf_tokenizer"]

RUN_LOADERS: dict[str, Callable] = {}


def register_run_loader(recipe: str):
    """``@register_run_loader("topolm")`` on ``fn(run_dir) -> [Subject, …]`` (the model first, controls after)."""
    def deco(fn):
        RUN_LOADERS[recipe] = fn
        return fn
    return deco


def hf_tokenizer(spec: str | None, folder: Path | None = None):
    """A tokenizer: ``bytes`` (UTF-8 bytes, our byte-level GPT), ``byt5`` (HuggingFace's byte-level ByT5
    tokenizer, no download), a folder holding a HuggingFace tokenizer, or — when ``spec`` is ``None`` — the
    tokenizer saved in ``folder``."""
    if spec == "bytes":
        return None
    from transformers import AutoTokenizer, ByT5Tokenizer
    if spec == "byt5":
        return ByT5Tokenizer()
    src = Path(spec) if spec else folder
    if src is None or not any((src / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ValueError(f"{folder or spec}: no tokenizer saved there; pass --tokenizer bytes|byt5|FOLDER")
    return AutoTokenizer.from_pretrained(str(src))


def _from_function(spec: str) -> tuple:
    mod_name, fn_name = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        s = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(s)
        sys.modules[path.stem] = mod
        s.loader.exec_module(mod)
    else:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            raise ValueError(f"{spec}: cannot import {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{spec}: {mod_name} has no function {fn_name!r}")
    got = fn()
    if not isinstance(got, tuple) or len(got) not in (2, 3) or not isinstance(got[0], nn.Module):
        raise ValueError(f"{spec} must return (model, topography) or (model, topography, info dict)")
    return got[0], got[1], (got[2] if len(got) == 3 else {})


def _hf_model(folder: Path):
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"{folder}: a HuggingFace folder without weights (no *.safetensors or pytorch_model.bin)")
    import transformers
    transformers.logging.set_verbosity_error()  # its load report would bury the probe's one-line errors
    transformers.logging.disable_progress_bar()
    conf = transformers.AutoConfig.from_pretrained(str(folder))
    archs = conf.architectures or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
        return model, True
    model = transformers.AutoModel.from_pretrained(str(folder))
    return model, False


def load_subjects(spec: str, name: str = "model", sheets=None, layout: str = "grid", units: str = "channels",
                  tokenizer: str | None = None, input_shape=None, reference: list[Sheet] | None = None) -> list[Subject]:
    """The subjects a MODEL argument stands for (a run directory of two arms gives both, the control last).

    ``sheets``/``layout``/``units``: modules to read on a model that carries no positions (``--sheets``).
    ``reference``: sheets whose layouts a control without positions reuses."""
    p = Path(spec)
    if ":" in spec and not p.exists():
        model, topo, info = _from_function(spec)
        # a language model says so, or brings a tokenizer (None: bytes) or a context window
        language = info.get("language", "tokenizer" in info or "block_size" in info)
        shape = tuple(info["input_shape"]) if "input_shape" in info else input_shape
        sh = _sheets(model, topo if topo is not None else sheets, layout, units, shape, reference, ids=language)
        return [Subject(name, model, sh, info.get("tokenizer"), info.get("block_size"), shape, info.get("transform"),
                        bool(language))]
    if not p.exists():
        raise FileNotFoundError(f"{spec}: no such run directory, HuggingFace folder or module:function")
    conf_path = p / "config.json"
    if not conf_path.is_file():
        raise FileNotFoundError(f"{p}: no config.json — not a run directory of ours nor a HuggingFace model folder")
    try:
        conf = json.loads(conf_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{conf_path}: not valid JSON ({e})") from None
    if isinstance(conf.get("config"), dict):
        recipe = conf["config"].get("recipe")
        loader = RUN_LOADERS.get(recipe)
        if loader is None:
            raise ValueError(f"{p}: runs of recipe {recipe!r} cannot be probed (probe-able: {sorted(RUN_LOADERS)})")
        subs = loader(p)
        if sheets is not None:
            for s in subs:
                s.sheets = _sheets(s.model, sheets, layout, units, s.input_shape, None)
        return subs
    if "model_type" in conf:
        model, language = _hf_model(p)
        tok = hf_tokenizer(tokenizer, p) if language else None
        if sheets is None:
            saved = saved_positions(p)  # from_pretrained drops the topo_positions entries: read them from the files
            sheets = saved or None
        sh = _sheets(model, sheets, layout, units, input_shape, reference, ids=language)
        return [Subject(name, model, sh, tok, None, input_shape, None, language)]
    raise ValueError(f"{p}: config.json is neither a run config of ours nor a HuggingFace config (no model_type)")


def _sheets(model, sheets, layout, units, input_shape, reference, ids: bool = False) -> list[Sheet]:
    import torch
    from ..topography import Topography
    if sheets is None and reference is not None and not any(
            positions_of(m) is not None for m in model.modules()):
        from .run import control_sheets
        return control_sheets(model, reference)
    if isinstance(sheets, Topography):
        return find_sheets(model, sheets)
    example = (torch.zeros(1, 8, dtype=torch.long) if ids else
               torch.zeros(1, *input_shape) if input_shape is not None else None)
    if isinstance(sheets, (list, tuple, str)) and example is None:
        raise ValueError("--sheets on an image model needs --input-shape C,H,W to learn the sheets' sizes")
    return find_sheets(model, sheets, layout, units, example_input=example)
