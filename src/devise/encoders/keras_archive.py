"""A saved ``.keras`` file read without Keras: its config and its weights as numpy arrays, checked.

Keras 3 saves a model as a zip archive of ``config.json`` (the serialised
objects), ``metadata.json`` and ``model.weights.h5``, where each layer's
variables are the datasets ``<path>/vars/0``, ``<path>/vars/1``, ... in the
order of the layer's own variables, under the path of its attribute or
class name. Reading that with ``zipfile``, ``json`` and ``h5py`` takes a few
milliseconds, where ``keras.saving.load_model`` first imports TensorFlow
(about five seconds on a 2-core machine); that is why this module exists
beside Keras' own loader. Nothing here interprets a layer: see
:mod:`devise.encoders.text_numpy` for the text encoder.

The archive is checked as it is read: a truncated or damaged file fails
zip's own structure and CRC-32 checks, and a zip without the two members is
not taken for a model.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

import numpy as np

from devise.errors import DataFormatError

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
_VAR = re.compile(r"(.*)/vars/(\d+)")


class KerasArchive:
    """The config and every weight of a ``.keras`` file, read with ``zipfile``, ``json`` and ``h5py``.

    Use :meth:`read`.

    Attributes:
        path: the file read.
        config: the parsed ``config.json``.
        variables: each layer path of the weights file (e.g.
            ``"layers/text_encoder/sequence/cell"``) to its variables, in order.
    """

    def __init__(self, path: str, config: dict, variables: dict[str, list[np.ndarray]]):
        self.path = path
        self.config = config
        self.variables = variables

    @classmethod
    def read(cls, path: str | os.PathLike) -> KerasArchive:
        """Read and check a ``.keras`` file.

        Raises:
            DataFormatError: the file is missing, not a zip archive, truncated
                or damaged (CRC mismatch), or lacks ``config.json`` or
                ``model.weights.h5``, or either cannot be parsed; the message
                names the file.
        """
        import h5py  # a core dependency; imported here so the module costs nothing until used

        path = os.fspath(path)
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                missing = [m for m in (CONFIG_MEMBER, WEIGHTS_MEMBER) if m not in names]
                if missing:
                    raise DataFormatError(
                        f"{path}: not a Keras 3 model file (the archive has no {' or '.join(missing)}); "
                        "give the model.keras that devise-train wrote"
                    )
                # read() checks each member's CRC-32: a damaged member raises BadZipFile.
                config_bytes = archive.read(CONFIG_MEMBER)
                weights_bytes = archive.read(WEIGHTS_MEMBER)
        except FileNotFoundError:
            raise DataFormatError(f"{path}: model file not found") from None
        except IsADirectoryError:
            raise DataFormatError(f"{path}: a folder, not a model file") from None
        except (zipfile.BadZipFile, EOFError) as exc:
            raise DataFormatError(
                f"{path}: not a readable Keras model file (truncated or damaged zip archive: {exc}); "
                "copy or train the model again"
            ) from None
        except OSError as exc:
            raise DataFormatError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
        try:
            config = json.loads(config_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFormatError(f"{path}: {CONFIG_MEMBER} in the model file is not JSON ({exc})") from None
        if not isinstance(config, dict):
            raise DataFormatError(f"{path}: {CONFIG_MEMBER} in the model file is not a JSON object")
        variables: dict[str, dict[int, np.ndarray]] = {}
        try:
            with h5py.File(io.BytesIO(weights_bytes), "r") as weights:

                def visit(name: str, item) -> None:
                    if not isinstance(item, h5py.Dataset):
                        return
                    match = _VAR.fullmatch(name)
                    if match is None:
                        raise DataFormatError(f"{path}: unexpected dataset {name!r} in {WEIGHTS_MEMBER}")
                    variables.setdefault(match.group(1), {})[int(match.group(2))] = item[()]

                weights.visititems(visit)
        except OSError as exc:
            raise DataFormatError(f"{path}: {WEIGHTS_MEMBER} in the model file is not HDF5 ({exc})") from None
        ordered = {}
        for layer, found in variables.items():
            if sorted(found) != list(range(len(found))):
                raise DataFormatError(f"{path}: the variables of {layer!r} are not numbered 0..{len(found) - 1}")
            ordered[layer] = [np.asarray(found[i]) for i in range(len(found))]
        return cls(path, config, ordered)

    def layer_paths(self) -> set[str]:
        """Every layer path that holds variables."""
        return set(self.variables)
