"""fsjax: JAX-accelerated simulation of fair federated and fleet learning."""

__version__ = "0.1.0"
