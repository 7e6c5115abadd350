"""mrbench: multi-grain multimodal retrieval benchmark toolkit.

Public API (imported lazily, so ``import mrbench`` and ``mrbench --help`` stay fast)::

    mrbench.evaluate(benchmark, encoder, ...) -> EvaluationResult
    mrbench.load_benchmark(name_or_dir) -> Benchmark
    mrbench.get_encoder(name, **kwargs) -> Encoder
    mrbench.Encoder, mrbench.EncoderMeta, mrbench.EncodeInput
    mrbench.Benchmark, mrbench.Task, mrbench.Query, mrbench.Candidate, mrbench.Grain
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "evaluate": "mrbench.pipeline:evaluate",
    "EvaluationResult": "mrbench.report.results:EvaluationResult",
    "load_benchmark": "mrbench.data.registry:load_benchmark",
    "save_benchmark": "mrbench.data.io:save_benchmark",
    "get_encoder": "mrbench.encoders.registry:get_encoder",
    "register_encoder": "mrbench.encoders.registry:register_encoder",
    "list_encoders": "mrbench.encoders.registry:list_encoders",
    "Encoder": "mrbench.encoders.base:Encoder",
    "EncoderMeta": "mrbench.encoders.base:EncoderMeta",
    "EncodeInput": "mrbench.encoders.base:EncodeInput",
    "Benchmark": "mrbench.data.schema:Benchmark",
    "Task": "mrbench.data.schema:Task",
    "Query": "mrbench.data.schema:Query",
    "Candidate": "mrbench.data.schema:Candidate",
    "Grain": "mrbench.data.schema:Grain",
    "MrbenchError": "mrbench.errors:MrbenchError",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mrbench' has no attribute {name!r}")
    mod, attr = target.split(":")
    value = getattr(importlib.import_module(mod), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
