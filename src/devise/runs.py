"""A training run directory as its readers see it: finished or not, and its config.

The trainer writes run directories (:mod:`devise.training.run_directory`);
evaluation, search, classification and the web page read them. What the
readers need, the completion marker and the saved config, lives here, below
training and search both, so that reading a run never imports the trainer.

A run directory is complete only once its last file, :data:`COMPLETE_FILE`,
is in place: the trainer writes it after everything else, and every reader
refuses a directory without it, so a run killed half-way (which may hold a
new ``config.yaml`` beside an older ``model.keras``) is never read as a
finished one.
"""

from __future__ import annotations

import os

from devise.config import ExperimentConfig, load_config
from devise.errors import DeviseError

#: Written last by the trainer; its presence means every other file of the run is final.
COMPLETE_FILE = "run_complete.json"
#: The resolved config the trainer saved at the start of the run.
CONFIG_FILE = "config.yaml"
#: The checkpoint an unfinished run resumes from (devise.training.resume writes it after every epoch).
RESUME_CHECKPOINT = os.path.join("resume", "checkpoint.h5")


def check_run_complete(run_dir: str | os.PathLike) -> None:
    """Refuse a run directory whose training did not finish.

    Raises:
        DeviseError: no :data:`COMPLETE_FILE` (the run was interrupted or is still running).
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isfile(os.path.join(run_dir, COMPLETE_FILE)):
        if os.path.isfile(os.path.join(run_dir, RESUME_CHECKPOINT)) and os.path.isfile(
            os.path.join(run_dir, CONFIG_FILE)
        ):
            raise DeviseError(
                f"{run_dir}: this run did not finish (interrupted, or still running); resume it with "
                f"devise-train --config {os.path.join(run_dir, CONFIG_FILE)} --run-dir {run_dir}"
            )
        raise DeviseError(
            f"{run_dir}: this run did not finish (no {COMPLETE_FILE}); its files may be from different "
            "runs. Train again (devise-train --run-dir on this folder) or use a finished run"
        )


def read_run_config(run_dir: str | os.PathLike) -> ExperimentConfig:
    """The config a run was trained with (its ``config.yaml``).

    Raises:
        DeviseError: ``run_dir`` has no ``config.yaml`` (not a devise run directory).
        ConfigError: the file is not a valid config.
    """
    path = os.path.join(os.fspath(run_dir), CONFIG_FILE)
    if not os.path.isfile(path):
        raise DeviseError(f"{run_dir}: not a devise run directory (no {CONFIG_FILE})")
    return load_config(path)
