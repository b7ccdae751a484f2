"""The ``emotrain`` subcommands: one module each, exposing ``add_arguments(parser)`` and ``run(args) -> int``.

A command parses its flags and calls into the library (``data``, ``models``, ``training``,
``evaluation``, ``fusion``); it holds no pipeline logic of its own. :mod:`emotrain.cli` imports
only the chosen one, so ``emotrain --help`` answers without loading torch.
"""
