"""mrbench: multi-grain multimodal retrieval benchmark toolkit."""

__version__ = "0.1.0"
