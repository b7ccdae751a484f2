#!/usr/bin/env python
"""What every launcher runs on every rank: torchrun, accelerate launch, deepspeed, srun, submitit.

    torchrun --nproc_per_node 2 launch/train.py demo/audio_text --set data.shards=shards/demo --run-dir runs/a

Same arguments as ``emotrain train`` (see ``--help``). The ``--local_rank`` the deepspeed launcher
appends is dropped: the rank comes from the environment (emotrain/training/distributed.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotrain.training import distributed as dist  # noqa: E402
from emotrain.cli import main as cli_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Entry for in-process callers too (launch/submit.py): argv without the program name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli_main(["train", *dist.strip_launcher_args(argv)])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
