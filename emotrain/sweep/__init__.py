"""Sweeps: settings x seeds, each point an ordinary run; local or a SLURM job array; a report over seeds.

spec (the sweep file and its points), layout (the sweep folder), runner (points on this machine),
array (a submitit job array), summary (mean, std, 95% interval; the setting chosen on val), outputs
(markdown, JSON, PNG, TensorBoard HParams).
"""
