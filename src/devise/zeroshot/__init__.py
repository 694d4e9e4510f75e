"""Zero-shot classification: classify images into classes never seen in training.

DeViSE's headline experiment: a linear map from cached image features into
the word-vector space, trained on some classes, recognises others through
their names' word vectors. Compared with a softmax (which cannot), ConSE
(which mixes the softmax's top labels' vectors) and DeViSE trained on random
label vectors (which shows the word vectors carry the information).

Example:
```python
import devise.zeroshot as zs

labels = zs.label_vectors(class_names, word_vectors, label_words=label_words)
labels.raise_if_missing()
result = zs.run_zeroshot_methods(
    train_x, train_y, test_x, test_y, class_names, labels, unseen=["zebra"], seed=0, epochs=100
)
print(zs.format_zeroshot_table(result))
```

Label vectors, splits and metrics need only NumPy; the methods and the
experiment (Keras) load on first use, so evaluating saved scores does not
import TensorFlow.
"""

from __future__ import annotations

import importlib

from devise.zeroshot.labels import LabelVectors, MissingLabelVectorsError, label_vectors, random_label_vectors
from devise.zeroshot.metrics import (
    ZEROSHOT_KS,
    ZEROSHOT_SETTINGS,
    ZeroShotScorer,
    chance_hit_at_k,
    evaluate_zeroshot,
    hit_at_k,
    per_class_hit_at_1,
    true_class_ranks,
)
from devise.zeroshot.unseen import (
    SplitImage,
    ZeroShotSplit,
    assert_no_leak,
    assert_no_unseen_labels,
    check_unseen_names,
    split_unseen_classes,
)

# Names whose modules import Keras, loaded on first access.
_LAZY = {
    "ZEROSHOT_METHODS": "devise.zeroshot.experiment",
    "format_zeroshot_table": "devise.zeroshot.experiment",
    "run_zeroshot_methods": "devise.zeroshot.experiment",
    "LabelHingeRankLoss": "devise.zeroshot.label_hinge",
    "ConSE": "devise.zeroshot.methods",
    "DeViSEClassifier": "devise.zeroshot.methods",
    "SoftmaxClassifier": "devise.zeroshot.methods",
    "random_vectors_control": "devise.zeroshot.methods",
}

__all__ = [
    "ZEROSHOT_KS",
    "ZEROSHOT_METHODS",
    "ZEROSHOT_SETTINGS",
    "ConSE",
    "DeViSEClassifier",
    "LabelHingeRankLoss",
    "LabelVectors",
    "MissingLabelVectorsError",
    "SoftmaxClassifier",
    "SplitImage",
    "ZeroShotScorer",
    "ZeroShotSplit",
    "assert_no_leak",
    "assert_no_unseen_labels",
    "chance_hit_at_k",
    "check_unseen_names",
    "evaluate_zeroshot",
    "format_zeroshot_table",
    "hit_at_k",
    "label_vectors",
    "per_class_hit_at_1",
    "random_label_vectors",
    "random_vectors_control",
    "run_zeroshot_methods",
    "split_unseen_classes",
    "true_class_ranks",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'devise.zeroshot' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
