"""topotorch: spatially embedded neural networks in PyTorch."""
from . import costs, gpt, layout, metrics
from .layout import Layout, distance
from .graph import NeuronGraph, NeuronLayer, Port, WeightLayer, embed
from .costs import WiringCost
from .relocate import relocate
from .models import MLP
from .topography import Topography, attach

__version__ = "0.1.0"
__all__ = ["costs", "gpt", "layout", "metrics", "Layout", "distance", "NeuronGraph", "NeuronLayer", "Port", "WeightLayer", "embed",
           "WiringCost", "relocate", "MLP", "attach", "Topography"]
