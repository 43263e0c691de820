"""plateau entry point: ``python sweep.py`` runs one trial, ``python sweep.py -m`` a sweep."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from errors import exit_on_user_error
from sweeps.hydra_errors import one_line_hydra_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    from sweeps.job.run import run_trial  # after Hydra parsed the command line: fast --help

    return run_trial(cfg)


if __name__ == "__main__":
    with one_line_hydra_errors():  # Hydra's own errors (unknown option, key, type) too
        main()
