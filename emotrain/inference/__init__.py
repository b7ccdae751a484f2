"""Applying a trained system: ``bundle`` (everything one process needs), ``predict`` (the Python API: score
and fuse), ``sources`` (a raw AvaMERG folder or shards, each turn once across ranks), ``outputs`` (JSONL,
CSV, summary). The commands are :mod:`emotrain.commands.bundle` and :mod:`emotrain.commands.predict`."""
