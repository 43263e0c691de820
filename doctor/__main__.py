"""``python -m doctor``: the doctor's checks on the same config ``sweep.py`` composes.

::

    python -m doctor preflight [OVERRIDES...]             # data, transforms, model; no training
    python -m doctor rank backbone=a,b,c [OVERRIDES...]   # backbones by LogME, no training
    python -m doctor report [--out DIR] [OVERRIDES...]    # the report of an existing study

``OVERRIDES`` are those of the ``sweep.py`` command being checked (``data=image_folder
data.root=...``, ``hydra.sweeper.storage=...``). ``preflight`` exits 2 when a check finds an
error, 0 otherwise; warnings are printed either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from errors import PlateauError, one_line, report_user_error

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``, as ``sweep.py`` composes it (``hydra`` kept)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        reason = one_line(err, 300).split(" Config search path")[0]
        raise PlateauError(f"the overrides do not compose ({reason}): check them against "
                           "python sweep.py --help") from err
    HydraConfig.instance().set_config(cfg)
    return cfg


def preflight(overrides: list[str]) -> int:
    from sweeps.job.prepare import preflight_config  # heavy imports after parsing

    report = preflight_config(compose_config(overrides))
    report.show(verbose=True)
    return 2 if report.of("error") else 0


def _candidates(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(backbone names of ``backbone=a,b,c``, the other overrides)."""
    chosen = [o for o in overrides if o.startswith("backbone=")]
    names = [n.strip() for o in chosen for n in o.split("=", 1)[1].split(",") if n.strip()]
    if len(names) < 2:
        raise PlateauError("rank needs two or more backbones to compare: give them as "
                           "backbone=a,b,c (options of the backbone group, python sweep.py "
                           "--help lists them)")
    return list(dict.fromkeys(names)), [o for o in overrides if o not in chosen]


def rank(overrides: list[str]) -> int:
    from sweeps.job.ranking import PROBE, print_ranking, rank_backbones  # heavy imports

    names, rest = _candidates(overrides)

    def job(name: str) -> DictConfig:
        cfg = compose_config([*rest, f"backbone={name}", *PROBE])
        return OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])

    print_ranking(rank_backbones(names, job))
    return 0


def report(out: Path, overrides: list[str]) -> int:
    from sweeps.report.publish import report_existing

    path = report_existing(compose_config(overrides), out)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m doctor", description=__doc__.split("::")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("preflight", help="check data, transforms and model")
    check.add_argument("overrides", nargs="*", help="sweep.py overrides, e.g. data=image_folder")
    ranking = commands.add_parser("rank", help="rank backbones by LogME, before training")
    ranking.add_argument("overrides", nargs="*", help="backbone=a,b,c and sweep.py overrides")
    study = commands.add_parser("report", help="write the report of an existing study")
    study.add_argument("--out", type=Path, default=Path("plateau-report"),
                       help="folder for report.md and its plots (default: plateau-report)")
    study.add_argument("overrides", nargs="*", help="the sweep's overrides (storage, study)")
    args = parser.parse_args(argv)
    try:
        if args.command == "preflight":
            return preflight(args.overrides)
        if args.command == "rank":
            return rank(args.overrides)
        return report(args.out, args.overrides)
    except PlateauError as err:
        report_user_error(err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
