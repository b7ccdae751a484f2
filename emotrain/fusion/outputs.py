"""What a fusion leaves on disk: ``fusion.json``, ``fusion.md``, ``fusion.png`` and the chosen strategy's report.

``fusion.json`` holds every metric of every system, the chosen strategy, every fitted parameter
and the key counts; ``fusion.md`` the comparison table; ``fusion.png`` its bar plot; and, for the
chosen strategy, ``report.json`` with its confusion, per-class and reliability figures.
"""

from __future__ import annotations

from pathlib import Path

from emotrain.evaluation.report import (
    comparison_figure,
    log_to_tensorboard,
    markdown_table,
    save_figure,
    split_scalars,
    write_report,
)
from emotrain.files import write_atomic
from emotrain.fusion.fusion_file import FusionSummary
from emotrain.fusion.pipeline import FusionConfig, FusionResult
from emotrain.names import FUSION_ROLES, TEST


def render_markdown(result: FusionResult, audio: Path, video: Path) -> str:
    counts = result.counts[TEST]
    fallback = ", ".join(f"{counts[f'only_{n}']} only by {n}" for n in FUSION_ROLES)
    best_val = result.val_scores[result.chosen]
    return "\n".join([
        f"# Late fusion: {audio} + {video}",
        "",
        f"Test split. Chosen on val: **{result.chosen}** (val macro-F1 {best_val['macro_f1']:.4f}, "
        f"NLL {best_val['nll']:.4f}). Fused rows cover {counts['both']} keys both models scored and fall back "
        f"to one calibrated model on the rest ({fallback}); {counts['unlabelled']} unlabelled keys left out. "
        f"Single-model rows cover that model's own labelled keys.",
        "",
        markdown_table(result.rows, marked=[result.chosen_row]),
        "",
    ])


def write_outputs(result: FusionResult, config: FusionConfig, audio: Path, video: Path, out: Path,
                  tensorboard: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    FusionSummary.from_result(result, config, audio, video).save(out)
    write_atomic(out / "fusion.md", render_markdown(result, audio, video))
    bars = comparison_figure(result.rows, f"test: single models and late fusion (chosen: {result.chosen})")
    save_figure(bars, out / "fusion.png")
    write_report(out, {TEST: result.rows[result.chosen_row]},
                 extra={"system": result.chosen_row, "audio_run": str(audio), "video_run": str(video)},
                 tensorboard_dir=tensorboard)
    if tensorboard is not None:
        scalars = {}
        for name, metrics in result.rows.items():
            scalars.update(split_scalars(f"fusion/test/{name.replace(': ', '/').replace(' ', '_')}", metrics))
        log_to_tensorboard(tensorboard, scalars, {"fusion/test/comparison": bars})
