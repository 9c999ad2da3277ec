"""roofline: where a Transformer block spends its time on a GPU, and why."""

__version__ = "0.1.0"
