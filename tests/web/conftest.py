import pathlib

import pytest


@pytest.fixture(scope="module")
def tiny_index(tiny_run, tmp_path_factory) -> pathlib.Path:
    """A search index of the tiny run's own dataset images, built once per module."""
    import devise
    from devise.cli import index as index_cli

    config = devise.load_config(tiny_run / "config.yaml")
    out = tmp_path_factory.mktemp("web_index") / "shapes.h5"
    images = f"{config.data.root}/dataset"
    assert index_cli.main(["--run", str(tiny_run), "--images", images, "--out", str(out), "--quiet"]) == 0
    return out
