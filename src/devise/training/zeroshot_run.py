"""The paper's zero-shot experiment as a run: class folders -> cached features -> four methods -> ``zeroshot.json``.

:class:`~devise.training.Trainer` calls :func:`run_zeroshot` for
``data.dataset: folders``. Classes named in ``zeroshot.unseen`` are held out
of training entirely (no image, no label vector); DeViSE, a softmax
classifier, ConSE and DeViSE against random label vectors are trained on the
same cached features and scored with flat hit@k. The DeViSE map is also
saved as an ordinary ``model.keras`` (image side: the learned map; text
side: the mean word vector of a label), so ``devise-classify``,
``devise-index`` and ``devise-search`` work on a label-trained run too.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from devise.datasets.folders import class_images_by_split, read_class_folders, split_class_images
from devise.datasets.pascal import IMAGE_DIR
from devise.datasets.report import DataReport
from devise.datasets.shapes import generate_shapes
from devise.errors import DeviseError
from devise.model import DeViSEModel
from devise.training.run_directory import write_json
from devise.zeroshot.labels import label_vectors
from devise.zeroshot.unseen import assert_no_leak, check_unseen_names, split_unseen_classes

if TYPE_CHECKING:  # pragma: no cover
    from devise.training.trainer import Trainer, TrainResult

ZEROSHOT_FILE = "zeroshot.json"


def is_zeroshot(config) -> bool:
    """Whether a config asks for the zero-shot experiment: class folders, or shapes with unseen classes."""
    return config.data.dataset == "folders" or (config.data.dataset == "shapes" and bool(config.zeroshot.unseen))


def run_zeroshot(trainer: Trainer, run_dir: str) -> TrainResult:
    """Run the zero-shot experiment the trainer's config describes; see the module docstring."""
    from devise.training.trainer import TrainResult
    from devise.zeroshot.experiment import format_zeroshot_table, run_zeroshot_methods

    config = trainer.config
    data, zs = config.data, config.zeroshot
    report = DataReport(strict=data.strict)
    root = data.root
    if data.dataset == "shapes":  # the offline demo: the 20 shape categories are the classes
        shapes = data.shapes
        generate_shapes(
            root, images_per_category=shapes.images_per_category, image_size=shapes.image_size, seed=shapes.seed
        )
        root = os.path.join(root, IMAGE_DIR)
    images = read_class_folders(root, label_file=data.labels, report=report, strict=data.strict)
    if all(image.split is not None for image in images) and data.split.by == "dataset":
        splits = class_images_by_split(images)
    else:
        # Per class, in the proportions of data.split's train/val/test counts (40/5/5: 80/10/10%).
        counts = {"train": data.split.train, "val": data.split.val, "test": data.split.test}
        total = sum(counts.values())
        if not total:
            raise DeviseError("data.split: train, val and test are all 0; give the proportions (e.g. 40/5/5)")
        fractions = {name: count / total for name, count in counts.items()}
        splits = split_class_images(images, fractions, seed=data.split.seed)
    class_names = sorted({image.class_name for image in images})
    unseen = check_unseen_names(zs.unseen, class_names)
    split = split_unseen_classes([i for part in splits.values() for i in part], unseen)
    assert_no_leak(split)
    # Label vectors before the (slow) features: a class without one stops the run at once.
    source = trainer.word_vectors()
    label_words = {image.class_name: image.label_words for image in images if image.label_words}
    labels = label_vectors(split.class_names, source, label_words=label_words or None)
    if labels.missing:
        if not zs.allow_missing_labels:
            raise DeviseError(
                f"{len(labels.missing)} class(es) of {root} have no word vector: "
                f"{', '.join(map(repr, labels.missing[:20]))}; map folder names to words with data.labels "
                "(a TSV file: folder_name<TAB>label words), or leave them out with zeroshot.allow_missing_labels=true"
            )
        trainer.log(
            f"zero-shot: no word vector for {', '.join(labels.missing)}; left out (zeroshot.allow_missing_labels)"
        )

    features = trainer.image_features(list(split.train) + list(split.test), report)
    write_json(os.path.join(run_dir, "data_report.json"), report.to_dict())
    if len(report):
        trainer.log(report.summary())

    def usable(part):
        return [image for image in part if image.image_id in features]

    train, test = usable(split.train), usable(split.test)
    if not train or not test:
        raise DeviseError(
            f"the zero-shot split has {len(train)} usable training and {len(test)} test images; "
            f"check data.root ({data.root}) and the data report in {run_dir}"
        )
    keep = [name for name in split.class_names if name not in set(labels.missing)]
    train = [image for image in train if image.class_name in keep]
    test = [image for image in test if image.class_name in keep]
    labels = labels.select(keep)
    unseen = tuple(name for name in unseen if name in keep)
    trainer.log(
        f"zero-shot: {len(keep)} classes ({len(unseen)} unseen: {', '.join(unseen)}); "
        f"{len(train)} training images, {len(test)} test images"
    )

    index = {name: i for i, name in enumerate(keep)}
    train_x = np.stack([features[i.image_id] for i in train]).astype(np.float32)
    test_x = np.stack([features[i.image_id] for i in test]).astype(np.float32)
    train_y = np.array([index[i.class_name] for i in train])
    test_y = np.array([index[i.class_name] for i in test])
    options = dict(
        seed=config.trainer.seed,
        epochs=zs.epochs,
        batch_size=config.trainer.batch_size,
        learning_rate=zs.learning_rate,
        margin=zs.margin,
        standardize=zs.standardize,
    )
    fitted: dict = {}
    result = run_zeroshot_methods(
        train_x, train_y, test_x, test_y, keep, labels, unseen, top_t=zs.top_t, fitted=fitted, **options
    )
    result["classes"] = {"seen": [n for n in keep if n not in unseen], "unseen": list(unseen)}
    result["label_words"] = dict(zip(labels.names, labels.words))
    write_json(os.path.join(run_dir, ZEROSHOT_FILE), result)
    write_json(os.path.join(run_dir, "metrics.json"), result)

    # The DeViSE map as a joint model: text side = unit mean word vector of a label.
    clf = fitted["devise"]
    model = _joint_model(trainer, clf, source, labels.words, train_x.shape[1])
    write_json(os.path.join(run_dir, "history.json"), clf.history)
    model.save(run_dir)
    if trainer.verbose:
        print(format_zeroshot_table(result))
        print(f"run directory: {run_dir}")
    return TrainResult(run_dir, model, result, clf.history)


def _joint_model(trainer: Trainer, clf, source, label_words, image_dim: int) -> DeViSEModel:
    config = trainer.config
    table, _ = trainer.build_word_table(source, [" ".join(words) for words in label_words])
    keras_model = trainer.build_model(table, image_dim, regression=True, standardize=config.zeroshot.standardize)
    projector = keras_model.image_projector
    embedding = clf.embedding_model
    kernel = embedding.get_layer("projection").get_weights()[0]
    projector.dense.set_weights([kernel, np.zeros(kernel.shape[1], np.float32)])
    if config.zeroshot.standardize:
        norm = embedding.get_layer("standardize")
        mean = np.asarray(norm.mean).reshape(-1)
        scale = np.maximum(np.sqrt(np.asarray(norm.variance).reshape(-1)), 1e-7)
        projector.feature_mean.assign(mean.astype(np.float32))
        projector.feature_scale.assign(scale.astype(np.float32))
    return DeViSEModel(keras_model)
