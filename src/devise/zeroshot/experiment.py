"""The zero-shot experiment: every method on the same features, one table.

:func:`run_zeroshot_methods` trains DeViSE, the softmax, ConSE (on that
softmax) and the random-vectors control on the seen classes' training
features, then evaluates each in the three settings of
:func:`~devise.zeroshot.evaluate_zeroshot`; :func:`format_zeroshot_table`
prints the result as a Markdown table with the chance row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from devise.errors import DeviseError
from devise.zeroshot.labels import LabelVectors, MissingLabelVectorsError
from devise.zeroshot.methods import ConSE, DeViSEClassifier, SoftmaxClassifier, random_vectors_control
from devise.zeroshot.metrics import ZEROSHOT_KS, ZEROSHOT_SETTINGS, evaluate_zeroshot
from devise.zeroshot.unseen import assert_no_unseen_labels, check_unseen_names

#: Method names, in result and table order.
ZEROSHOT_METHODS: tuple[str, ...] = ("devise", "conse", "softmax", "random_vectors")

_SETTING_TITLES = {
    "unseen": "unseen images, unseen labels",
    "all": "unseen images, all labels",
    "seen": "seen images, all labels",
}


def run_zeroshot_methods(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    class_names: Sequence[str],
    label_vectors: np.ndarray | LabelVectors,
    unseen: Sequence[str],
    *,
    seed: int = 0,
    epochs: int = 100,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    optimizer: str = "adam",
    margin: float = 0.1,
    top_t: int = 10,
    standardize: bool = True,
    methods: Sequence[str] = ZEROSHOT_METHODS,
    ks: Sequence[int] = ZEROSHOT_KS,
    fitted: dict | None = None,
) -> dict:
    """Train and evaluate the zero-shot methods on cached features.

    The training classes are every class not in ``unseen``; each must have
    training examples, and no training example may belong to an unseen
    class (checked with :func:`~devise.zeroshot.assert_no_unseen_labels`).
    The softmax is trained once and shared by ``"softmax"`` and ``"conse"``.
    The random-vectors control gets random unit vectors of the word
    vectors' dimension for every class, drawn with ``seed``.

    Args:
        train_features: ``(N, D)`` features of the training images.
        train_labels: ``(N,)`` their class ids (indices into ``class_names``).
        test_features: ``(M, D)`` features of the test images, seen and unseen.
        test_labels: ``(M,)`` their class ids.
        class_names: every class, seen and unseen, indexed by class id.
        label_vectors: ``(C, dim)`` label vectors in ``class_names`` order,
            or a :class:`~devise.zeroshot.LabelVectors` (rows are picked by
            name).
        unseen: names of the held-out classes.
        seed: seed of every method's training and of the random vectors.
        epochs: training epochs of each Keras-trained method.
        batch_size: images per training step.
        learning_rate: optimizer step size.
        optimizer: ``"adam"``, ``"adagrad"`` or ``"sgd"``.
        margin: DeViSE's hinge margin.
        top_t: ConSE's ``T``.
        standardize: standardise features with training statistics.
        methods: which of :data:`ZEROSHOT_METHODS` to run.
        ks: the k of each hit@k.
        fitted: if given, a dict that receives each trained method object
            by name (e.g. to save the DeViSE map).

    Returns:
        ``{"methods": {method: {"unseen_hit@1": pct, ..., "all_hit@1": ...,
        "seen_hit@1": ...}}, "chance": {same keys}, "per_class_hit@1":
        {method: {class: pct}}}``; percentages, NaN for a setting without
        test images.

    Raises:
        DeviseError: an unseen name is not a class, a seen class has no
            training examples, an unseen class has some, or a class has no
            label vector (:class:`~devise.zeroshot.MissingLabelVectorsError`).
        ValueError: an unknown method name, or shapes disagree.

    Example:
    ```python
    result = devise.zeroshot.run_zeroshot_methods(
        train_x, train_y, test_x, test_y, class_names, labels, unseen=["zebra", "polar_bear"], seed=0, epochs=100
    )
    print(devise.zeroshot.format_zeroshot_table(result))
    ```

    Reference:
        Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model",
        NIPS 2013; Norouzi et al., "Zero-Shot Learning by Convex Combination
        of Semantic Embeddings", ICLR 2014.
    """
    unknown = [name for name in methods if name not in ZEROSHOT_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {', '.join(ZEROSHOT_METHODS)}")
    names = list(class_names)
    unseen_names = check_unseen_names(unseen, names)
    vectors = _label_matrix(label_vectors, names)
    train_labels = np.asarray(train_labels)
    assert_no_unseen_labels(train_labels, names, unseen_names)
    seen_ids = [i for i, name in enumerate(names) if name not in set(unseen_names)]
    untrained = [names[i] for i in seen_ids if not np.any(train_labels == i)]
    if untrained:
        raise DeviseError(
            f"seen class(es) {', '.join(map(repr, untrained))} have no training examples; "
            "list them as unseen, or give them training images"
        )

    training = dict(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=optimizer,
        standardize=standardize,
        seed=seed,
    )
    fitted = {} if fitted is None else fitted
    if "devise" in methods:
        devise = DeViSEClassifier(vectors, margin=margin, **training)
        fitted["devise"] = devise.fit(train_features, train_labels, classes=seen_ids)
    if "softmax" in methods or "conse" in methods:
        softmax = SoftmaxClassifier(len(names), **training).fit(train_features, train_labels, classes=seen_ids)
        fitted["softmax"] = softmax
        fitted["conse"] = ConSE(softmax, vectors, top_t=top_t)
    if "random_vectors" in methods:
        control = random_vectors_control(len(names), vectors.shape[1], margin=margin, **training)
        fitted["random_vectors"] = control.fit(train_features, train_labels, classes=seen_ids)

    result: dict = {"methods": {}, "chance": {}, "per_class_hit@1": {}}
    for name in ZEROSHOT_METHODS:
        if name not in methods:
            continue
        evaluation = evaluate_zeroshot(fitted[name], test_features, test_labels, names, unseen_names, ks=ks)
        result["methods"][name] = evaluation["metrics"]
        result["per_class_hit@1"][name] = evaluation["per_class_hit@1"]
        result["chance"] = evaluation["chance"]
    return result


def format_zeroshot_table(result: dict, digits: int = 1) -> str:
    """The result of :func:`run_zeroshot_methods` as a Markdown table.

    One row per method and a chance row; one column per setting, holding
    hit@k for every k as ``a / b / c / d``. NaN (no test images) prints as
    ``-``.

    Args:
        result: the dict :func:`run_zeroshot_methods` returns.
        digits: decimals of each percentage.

    Returns:
        The table, lines joined with ``\\n``.

    Example:
    ```
    | method | unseen images, unseen labels hit@1/2/5/10 | ... |
    |--------|-------------------------------------------|-----|
    | devise | 95.0 / 100.0 / 100.0 / 100.0              | ... |
    | chance | 33.3 / 66.7 / 100.0 / 100.0               | ... |
    ```
    """
    chance = result["chance"]
    ks = [key.split("@", 1)[1] for key in chance if key.startswith("unseen_hit@")]
    header = ["method"] + [f"{_SETTING_TITLES[s]} hit@{'/'.join(ks)}" for s in ZEROSHOT_SETTINGS]
    rows = [[name] + _cells(metrics, ks, digits) for name, metrics in result["methods"].items()]
    rows.append(["chance"] + _cells(chance, ks, digits))
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), separator] + [line(row) for row in rows])


def _cells(metrics: dict, ks: list[str], digits: int) -> list[str]:
    def number(value: float) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    return [" / ".join(number(metrics[f"{s}_hit@{k}"]) for k in ks) for s in ZEROSHOT_SETTINGS]


def _label_matrix(label_vectors: np.ndarray | LabelVectors, names: list[str]) -> np.ndarray:
    """The ``(C, dim)`` label matrix in ``names`` order; every class must have a vector."""
    if isinstance(label_vectors, LabelVectors):
        try:
            label_vectors = label_vectors.select(names)
        except KeyError as exc:
            raise DeviseError(f"label vectors: {exc.args[0]}") from None
        label_vectors.raise_if_missing()
        return label_vectors.vectors
    vectors = np.asarray(label_vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(names):
        raise ValueError(f"label_vectors must be ({len(names)}, dim), got shape {vectors.shape}")
    zero = [name for name, row in zip(names, vectors) if not np.any(row)]
    if zero:
        raise MissingLabelVectorsError(zero)
    return vectors
