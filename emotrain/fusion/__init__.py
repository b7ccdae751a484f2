"""Late fusion of the audio and video models: temperature scaling, fusion strategies, `emotrain fuse`.

Modules: ``calibration`` (temperature scaling), ``late`` (the strategy protocol and the
fixed-rule strategies), ``learned`` (stacking and gating, trained on val with k-fold CV),
``runs`` (reading run directories, matching rows by key), ``pipeline`` (fit on val, pick on
val, score on test), ``cli`` (the command and its files).
"""
