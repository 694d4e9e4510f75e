"""devise: visual-semantic embeddings (DeViSE) and image search on TensorFlow 2 / Keras 3.

Example:
```python
import devise

config = devise.load_config("configs/demo.yaml", ["trainer.epochs=5"])
result = devise.Trainer(config).run()
model = devise.DeViSEModel.load(result.run_dir)
```
"""

from devise import datasets, embeddings, encoders, losses, retrieval, search, training
from devise.errors import ConfigError, DataFormatError, DeviseError, MissingResourcesError
from devise.model import DeViSEModel, build_joint_keras_model
from devise.search import SearchEngine
from devise.training import ExperimentConfig, Trainer, TrainResult, evaluate_retrieval, load_config

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataFormatError",
    "DeViSEModel",
    "DeviseError",
    "ExperimentConfig",
    "MissingResourcesError",
    "SearchEngine",
    "TrainResult",
    "Trainer",
    "build_joint_keras_model",
    "datasets",
    "embeddings",
    "encoders",
    "evaluate_retrieval",
    "load_config",
    "losses",
    "retrieval",
    "search",
    "training",
    "__version__",
]
