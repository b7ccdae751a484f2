"""What ``emotrain predict --media`` writes into ``OUT``:

- ``predictions.jsonl``: one turn a line, ``predict``'s row (key, label, path, present, probs of the fused
  system and of each model) plus ``start``, ``end`` (seconds), ``speaker``, ``text``, ``utterance`` and,
  with ``--explain``, ``explanation`` (attention per model over the turn's utterances, each model's share);
- ``predictions.csv`` (``--csv``): the same, one column per system and class;
- ``annotated.srt`` and ``annotated.vtt``: every utterance as a cue, the speaker's with its emotion added
  (``[sad 66%]``): a video player shows them over the video;
- ``timeline.png``: each class's fused probability over time, the turns marked;
- ``summary.json``: the input streams, the speaker, counts by path, notes (what was clipped, dropped or
  assumed), unusable clips with their reason, and the time spent transcribing, decoding, preprocessing
  and in the models.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from emotrain.files import write_atomic
from emotrain.inference.outputs import PredictOutput
from emotrain.inference.media.run import MediaPrediction, MediaTurn
from emotrain.inference.media.transcript import format_time


@dataclass(frozen=True)
class MediaOutput(PredictOutput):
    """The output folder of one ``predict --media`` run: ``predict``'s files, plus the annotated subtitles and the
    timeline."""

    @property
    def srt(self) -> Path:
        return self.root / "annotated.srt"

    @property
    def vtt(self) -> Path:
        return self.root / "annotated.vtt"

    @property
    def timeline(self) -> Path:
        return self.root / "timeline.png"

    def write_media(self, result: MediaPrediction, with_csv: bool = False, plot: bool = True) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.jsonl, "".join(json.dumps(t.row(result.classes), ensure_ascii=False) + "\n"
                                         for t in result.turns))
        if with_csv:
            write_atomic(self.csv, csv_text(result))
        write_atomic(self.srt, subtitles(result, "srt"))
        write_atomic(self.vtt, subtitles(result, "vtt"))
        if plot:
            write_atomic(self.timeline, timeline_png(result))
        write_atomic(self.summary, json.dumps(result.summary(), indent=1, ensure_ascii=False) + "\n")

    def files(self, with_csv: bool = False, plot: bool = True) -> list[Path]:
        return [p for p, on in ((self.jsonl, True), (self.csv, with_csv), (self.srt, True), (self.vtt, True),
                                (self.timeline, plot), (self.summary, True)) if on]


def csv_text(result: MediaPrediction) -> str:
    turns, classes = result.turns, result.classes
    systems = list(turns[0].prediction.probs) if turns else ["fused"]
    models = list(turns[0].prediction.present) if turns else []
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["key", "start", "end", "speaker", "text", "utterance", "label", "path"]
                    + [f"{m}_present" for m in models] + [f"{s}_{c}" for s in systems for c in classes])
    for t in turns:
        p, u = t.prediction, t.utterance
        writer.writerow([p.key, f"{u.start:.3f}", f"{u.end:.3f}", u.speaker, u.text, u.index, p.label, p.path]
                        + [int(p.present[m]) for m in models]
                        + [f"{float(x):.6g}" for s in systems for x in p.probs[s]])
    return buf.getvalue()


def _emotion(turn: MediaTurn, classes: list[str]) -> str:
    fused = turn.prediction.probs["fused"]
    return f"[{turn.label} {100 * float(fused[classes.index(turn.label)]):.0f}%]"


def subtitles(result: MediaPrediction, kind: str) -> str:
    """Every utterance as a cue, the speaker's turns with their emotion (``kind``: srt or vtt)."""
    by_utterance = {t.utterance.index: t for t in result.turns}
    blocks = []
    sep = "." if kind == "vtt" else ","
    for number, u in enumerate(result.utterances, 1):
        turn = by_utterance.get(u.index)
        text = u.text + (f" {_emotion(turn, result.classes)}" if turn is not None else "")
        if kind == "vtt":
            line = f"<v {u.speaker}>{text}" if u.speaker else text
            blocks.append(f"{format_time(u.start, sep)} --> {format_time(u.end, sep)}\n{line}\n")
        else:
            line = f"{u.speaker}: {text}" if u.speaker else text
            blocks.append(f"{number}\n{format_time(u.start, sep)} --> {format_time(u.end, sep)}\n{line}\n")
    return ("WEBVTT\n\n" if kind == "vtt" else "") + "\n".join(blocks)


def timeline_png(result: MediaPrediction, width: float = 10.0) -> bytes:
    """Each class's fused probability over time (a step over each turn's span), the turns shaded and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = result.classes
    fig, ax = plt.subplots(figsize=(width, 3.6), dpi=100)
    try:
        colours = plt.get_cmap("tab10")
        for t in result.turns:
            ax.axvspan(t.utterance.start, t.utterance.end, color="0.92", zorder=0)
            ax.text((t.utterance.start + t.utterance.end) / 2, 1.02, t.label, ha="center", va="bottom", fontsize=7,
                    rotation=90 if len(result.turns) > 12 else 0, transform=ax.get_xaxis_transform())
        if result.turns:
            for k, c in enumerate(classes):
                xs, ys = [], []
                for t in result.turns:
                    p = float(t.prediction.probs["fused"][k])
                    xs += [t.utterance.start, t.utterance.end, np.nan]
                    ys += [p, p, np.nan]
                ax.plot(xs, ys, color=colours(k % 10), lw=2, label=c)
                mids = [(t.utterance.start + t.utterance.end) / 2 for t in result.turns]
                ax.plot(mids, [float(t.prediction.probs["fused"][k]) for t in result.turns], color=colours(k % 10),
                        lw=0.8, ls=":", alpha=0.8)
        end = max([u.end for u in result.utterances] + [result.info.duration or 0.0, 1e-3])
        ax.set_xlim(0, end)
        ax.set_ylim(0, 1)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("fused probability")
        who = result.speaker or "the speaker"
        ax.set_title(f"{who}: {len(result.turns)} turns (shaded)", fontsize=9, pad=22)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
