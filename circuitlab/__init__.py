"""circuitlab: a command-line experiment runner for mechanistic interpretability."""

__version__ = "0.1.0"
