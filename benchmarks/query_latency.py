"""Command-line query latency: ``devise-search "a red circle"`` from a fresh process against importing TensorFlow.

Usage::

    python benchmarks/query_latency.py [--repeats 5] [--images 2000] [--words 100000] [--run RUN]

Builds, in a temporary folder, a finished run directory holding a model
shaped like the demo's (the first ``--words`` words of the offline 50-d
GloVe vectors, or random vectors without the ``demo`` extra; LSTM 256,
joint space 256, captions of 24 words; random weights, since latency does
not depend on training) and an index of ``--images`` small PNG files
(random unit embeddings). ``--run`` uses a run devise-train wrote instead
(what users search with: its ``model.keras`` also holds the optimizer's
state). Then, taking turns in the same run so that each
sees the same machine load, it times from a fresh process each:

- ``python -c "import tensorflow"`` (the baseline),
- ``devise-search --index X "a red circle" --json --text-backend numpy``
  (the numpy text path, which ``auto`` picks; ``numpy`` fails rather than
  fall back to Keras if the model is one it does not read),
- the same with ``--text-backend keras`` (the path before this one),

and prints the median of each and the ratio of the search to the baseline
(the target is at most 0.4), after checking that both search paths return
the same images in the same order with scores equal to 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

QUERY = "a red circle"
TARGET_RATIO = 0.4


def demo_shaped_run(base: str, words: int) -> str:
    """A finished run directory with a random-weight model of the demo's shape; returns its path."""
    from PIL import Image  # noqa: F401 - fail early if the image extra is missing

    from devise.config import load_config, save_config
    from devise.model import DeViSEModel, build_devise_model
    from devise.training.run_directory import mark_run_complete

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(repo, "configs", "demo.yaml"))
    rng = np.random.default_rng(0)
    try:
        from devise.embeddings.offline_glove import load_offline_glove_50d

        glove = load_offline_glove_50d()
        vocabulary, vectors = glove.words[:words], glove.vectors[:words]
        source = "offline GloVe 6B 50-d"
    except Exception as exc:  # the demo extra is optional here: the shape is what matters
        print(f"(no offline GloVe: {exc}; using random words)")
        vocabulary = ["a", "red", "circle"] + [f"w{i}" for i in range(words - 3)]
        vectors = rng.standard_normal((words, 50)).astype(np.float32)
        source = "random words"
    matrix = np.concatenate([np.zeros((2, vectors.shape[1]), np.float32), vectors])
    keras_model = build_devise_model(
        words=vocabulary,
        embedding_matrix=matrix,
        image_dim=1280,
        joint_dim=config.model.joint_dim,
        text_encoder="lstm",
        units=config.model.lstm_units,
        max_caption_length=config.data.max_caption_length,
    )
    keras_model.set_weights([(rng.standard_normal(w.shape) * 0.1).astype(w.dtype) for w in keras_model.get_weights()])
    run = os.path.join(base, "run")
    DeViSEModel(keras_model).save(run)
    save_config(config, os.path.join(run, "config.yaml"))
    mark_run_complete(run, ["config.yaml", "model.keras", "model.json"])
    print(f"model: {len(vocabulary)} words ({source}), LSTM {config.model.lstm_units}, joint {config.model.joint_dim}")
    return run


def random_index(base: str, run: str, images: int) -> str:
    """An index of ``images`` small PNG files whose embeddings are random unit vectors."""
    from PIL import Image

    from devise.numpy_model import NumpyTextModel
    from devise.search.index import update_index

    model = NumpyTextModel.load(run)
    root = os.path.join(base, "photos")
    for i in range(images):
        folder = os.path.join(root, f"{i // 500:03d}")
        os.makedirs(folder, exist_ok=True)
        Image.new("RGB", (4, 4), (i % 256, i // 256 % 256, 0)).save(os.path.join(folder, f"{i:06d}.png"))
    rng = np.random.default_rng(1)

    def embed(paths):
        vectors = rng.standard_normal((len(paths), model.joint_dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), list(range(len(paths))), []

    out = os.path.join(base, "photos.h5")
    update_index(out, root, model_fingerprint=model.fingerprint(), run_dir=run, embed=embed, progress=False)
    return out


def timed(command: list[str]) -> tuple[float, str]:
    """Wall time of a fresh process, and its standard output."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed, done.stdout


def same_results(numpy_answer: dict, keras_answer: dict) -> bool:
    ours, theirs = numpy_answer["results"], keras_answer["results"]
    return [h["id"] for h in ours] == [h["id"] for h in theirs] and bool(
        np.allclose([h["score"] for h in ours], [h["score"] for h in theirs], atol=1e-5, rtol=0)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per command (median reported)")
    parser.add_argument("--images", type=int, default=2000, help="images in the index")
    parser.add_argument("--words", type=int, default=100_000, help="words in the model's table (the demo: 100k)")
    parser.add_argument("--run", help="a finished devise-train run to search with (default: a random-weight one)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    script = shutil.which("devise-search", path=os.path.dirname(sys.executable)) or shutil.which("devise-search")
    search = [script] if script else [sys.executable, "-m", "devise.cli.search"]
    base = tempfile.mkdtemp(prefix="devise-query-latency-")
    try:
        run = args.run or demo_shaped_run(base, args.words)
        index = random_index(base, run, args.images)
        print(f"index: {args.images} images; query {QUERY!r}; {args.repeats} fresh processes each, taking turns")
        commands = {
            "import tensorflow": [sys.executable, "-c", "import tensorflow"],
            "devise-search (numpy text)": [*search, "--index", index, QUERY, "--json", "--text-backend", "numpy"],
            "devise-search --text-backend keras": [
                *search,
                "--index",
                index,
                QUERY,
                "--json",
                "--text-backend",
                "keras",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        outputs: dict[str, str] = {}
        for repeat in range(args.repeats):
            names = list(commands) if repeat % 2 == 0 else list(reversed(commands))
            for name in names:
                elapsed, outputs[name] = timed(commands[name])
                times[name].append(elapsed)
        numpy_answer = json.loads(outputs["devise-search (numpy text)"])
        keras_answer = json.loads(outputs["devise-search --text-backend keras"])
        identical = same_results(numpy_answer, keras_answer)
        print(f"\n{'command':<38}{'median s':>10}{'min s':>8}{'max s':>8}")
        for name, values in times.items():
            print(f"{name:<38}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
        baseline = statistics.median(times["import tensorflow"])
        ours = statistics.median(times["devise-search (numpy text)"])
        keras = statistics.median(times["devise-search --text-backend keras"])
        ratio = ours / baseline
        print(
            f"\nratio devise-search / import tensorflow: {ratio:.2f} (target <= {TARGET_RATIO}: "
            f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})"
        )
        print(f"ratio devise-search / the Keras text path: {ours / keras:.2f} ({keras / ours:.1f}x faster)")
        top = ", ".join(f"{h['id']} {h['score']:+.4f}" for h in numpy_answer["results"][:3])
        print(f"results identical to the Keras path (ids, order, scores to 1e-5): {identical}; top 3: {top}")
        if not identical:
            raise SystemExit("the numpy and Keras text paths disagree")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
