"""topotorch: spatially embedded neural networks in PyTorch.

The two user-facing routes: ``embed`` / ``NeuronGraph`` + ``WiringCost`` + ``relocate`` (BIMT: modular,
function-preserving), and ``attach`` / ``detach`` (topographic losses on any model's modules).
"""
from . import costs, gpt, hooks, layout, metrics
from .layout import Layout
from .graph import NeuronGraph, Port, embed
from .costs import WiringCost
from .relocate import relocate
from .models import MLP
from .topography import attach, detach, is_attached
from . import probe

__version__ = "0.1.0"
__all__ = ["costs", "gpt", "hooks", "layout", "metrics", "Layout", "NeuronGraph", "Port", "embed", "WiringCost",
           "relocate", "MLP", "attach", "detach", "is_attached", "probe"]
