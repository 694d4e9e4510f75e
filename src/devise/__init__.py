"""devise: visual-semantic embeddings (DeViSE) and image search on TensorFlow 2 / Keras 3.

Example:
```python
import devise

config = devise.load_config("configs/demo.yaml", ["trainer.epochs=5"])
result = devise.Trainer(config).run()
model = devise.DeViSEModel.load(result.run_dir)
```

Subpackages and names load on first use, so tools that need no model (the
downloaders, the index reader) start without importing TensorFlow.
"""

from __future__ import annotations

import importlib

from devise.errors import ConfigError, DataFormatError, DeviseError, MissingResourcesError, QueryError

__version__ = "0.1.0"

_SUBPACKAGES = ("datasets", "embeddings", "encoders", "losses", "retrieval", "search", "training", "zeroshot")
_NAMES = {
    "DeViSEModel": "devise.model",
    "DeViSEJointModel": "devise.model",
    "build_devise_model": "devise.model",
    "SearchEngine": "devise.search.engine",
    "ExperimentConfig": "devise.config",
    "load_config": "devise.config",
    "Trainer": "devise.training.trainer",
    "TrainResult": "devise.training.trainer",
    "evaluate_retrieval": "devise.training.evaluation",
}

__all__ = [
    "ConfigError",
    "DataFormatError",
    "DeViSEJointModel",
    "DeViSEModel",
    "DeviseError",
    "ExperimentConfig",
    "MissingResourcesError",
    "QueryError",
    "SearchEngine",
    "TrainResult",
    "Trainer",
    "build_devise_model",
    "datasets",
    "embeddings",
    "encoders",
    "evaluate_retrieval",
    "load_config",
    "losses",
    "retrieval",
    "search",
    "training",
    "zeroshot",
    "__version__",
]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"devise.{name}")
    elif name in _NAMES:
        module = getattr(importlib.import_module(_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'devise' has no attribute {name!r}")
    globals()[name] = module
    return module


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
