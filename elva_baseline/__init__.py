"""elva_baseline: the ELVA reference trainer (contrastive warmup → rule-reward GRPO).

The trainer itself lands with its own issue; this package exists so that the import name and the
dependency direction (elva_baseline imports mrbench, never the reverse) are fixed from the start.
"""

__version__ = "0.1.0"
