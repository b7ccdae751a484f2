"""The ``emotrain`` command.

Each subcommand lives in its own module, ``emotrain/commands/<name>.py``, exposing
``add_arguments(parser)`` and ``run(args) -> int``; only the chosen one is imported, so ``emotrain --help`` answers at
once without loading torch or DeepSpeed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from emotrain.config import ConfigError
from emotrain.console import VERBOSE_ENV, quiet_libraries, set_verbose
from emotrain.log import setup_logging

SUBCOMMANDS: dict[str, str] = {
    "synth": "write a small, learnable corpus in the real AvaMERG layout",
    "pack": "pack an AvaMERG folder into WebDataset shards + manifests",
    "inspect": "parameter counts (trainable / frozen) per module of a model config",
    "train": "train one model in this process (launchers run launch/train.py)",
    "evaluate": "score a run on val and/or test, on every rank, each turn exactly once",
    "fuse": "calibrate and late-fuse the audio and video runs; report on test",
    "export": "write a run's weights as a plain safetensors file + config",
    "bundle": "put trained runs and their fusion into one portable folder for predict",
    "predict": "apply a bundle to an AvaMERG folder or shards: per-turn labels and probabilities",
    "serve": "serve a bundle over HTTP (LitServe): /v1 API, batching, limits, metrics, a page at /",
    "sweep": "settings x seeds as ordinary runs (here or a SLURM job array); their mean, std and the val choice",
    "demo": "synthesise, pack, train both models, evaluate, fuse: the whole job",
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<9} {desc}" for name, desc in SUBCOMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="emotrain",
        description="Multimodal emotion recognition on AvaMERG: shards, distributed training, late fusion.",
        epilog=f"commands:\n{lines}\n\nRun `emotrain COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), metavar="COMMAND", help="one of the commands below")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help=f"show every library message too (same as {VERBOSE_ENV}=1; child processes inherit it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-v", "--verbose"):
        set_verbose()
        argv = argv[1:]
    quiet_libraries()  # before any library is imported: the filters must be in place when they speak
    setup_logging()
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] not in SUBCOMMANDS:
        top.error(f"unknown command {argv[0]!r} (choose from {', '.join(SUBCOMMANDS)})")
    name = argv[0]
    description = SUBCOMMANDS[name]
    module = importlib.import_module(f"emotrain.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"emotrain {name}", description=description)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except ConfigError as err:
        print(f"emotrain {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emotrain {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
