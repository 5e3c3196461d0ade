"""fusebench: correctness and benchmark harness for fused LLM-inference kernels."""

__version__ = "0.1.0"
