"""Measure topography on any model: TopoLM's language probes and TDANN's vision probes, every figure next to a
shuffled-position null (permutation p) and, where one is given, a control model.

``probe.find_sheets`` says which units are read and where they sit; ``probe.language`` and ``probe.vision``
hold the protocols; ``probe.stats`` the statistics; ``probe.run`` ties them together for ``topotorch probe``.
Nothing here changes the model: it runs in eval mode under ``no_grad`` and its mode is restored.
"""
from . import language, stats, vision
from .language import LM
from .sheets import Sheet, find_sheets, saved_positions

__all__ = ["language", "stats", "vision", "LM", "Sheet", "find_sheets", "saved_positions"]
