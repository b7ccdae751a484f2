"""Names the whole project shares, spelled once: the two models, the splits, the headline metrics and
the fused row of a fusion table. Files and folders, tables, sweep reports and bundles all use these."""

from __future__ import annotations

# The two early-fusion models (``model.kind``) and their roles in a late fusion (``--audio``/``--video``).
AUDIO_TEXT, VIDEO_TEXT = "audio_text", "video_text"
MODEL_KINDS: tuple[str, ...] = (AUDIO_TEXT, VIDEO_TEXT)
# Late fusion's names for the two models: the keys of their parameters in fusion.json and in a bundle.
FUSION_ROLES: tuple[str, ...] = ("audio", "video")
ROLE_OF_KIND = dict(zip(MODEL_KINDS, FUSION_ROLES))

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS: tuple[str, ...] = (TRAIN, VAL, TEST)
EVAL_SPLITS: tuple[str, ...] = (VAL, TEST)  # what evaluate scores, fusion fits (val) and reports (test)

# The headline metrics of every table, with the label a person reads.
METRIC_LABELS: dict[str, str] = {"accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1",
                                 "ece": "ECE"}
HEADLINE_METRICS: tuple[str, ...] = tuple(METRIC_LABELS)

FUSION = "fusion"  # the fused system's name in sweep reports


def fused_row(strategy: str) -> str:
    """The row of a fusion table that holds strategy ``strategy``."""
    return f"{FUSION}: {strategy}"


def raw_row(role: str) -> str:
    """The row of a fusion table that holds model ``role`` before calibration."""
    return f"{role} (raw)"


def calibrated_row(role: str) -> str:
    """The row of a fusion table that holds model ``role`` after temperature scaling."""
    return f"{role} (calibrated)"
