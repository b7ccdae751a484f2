"""Late fusion of the audio and video models: temperature scaling and fusion strategies.

Modules: ``calibration`` (temperature scaling), ``late`` (the strategy protocol and the
fixed-rule strategies), ``learned`` (stacking and gating, trained on val with k-fold CV),
``runs`` (reading run directories, matching rows by key), ``pipeline`` (fit on val, pick on
val, score on test), ``outputs`` (fusion.json/md/png and the report). The command is
:mod:`emotrain.commands.fuse`.
"""
