"""Assemble the GPU check's report (report.md and report.json) from what benchmarks/gpu_check.sh left in a folder.

    python benchmarks/gpu_report.py REPORT_DIR

Reads: steps.tsv (each step's exit code and seconds), torch_before.txt / torch_after.txt, gpu_tests.xml
(pytest's JUnit XML: each GPU test's outcome, the skip reasons), figures/*.json (what the GPU tests
measured: peak memory under the 12 GiB cap, the largest micro-batch, GPU-vs-CPU evaluation differences,
nvJPEG-vs-libjpeg pixels), throughput.json (benchmarks/gpu_throughput.py) and cores_per_gpu.log.
Without CUDA the report says which GPU steps were skipped and that its figures are CPU figures.
"""

from __future__ import annotations

import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _steps(folder: Path) -> list[dict]:
    rows = []
    path = folder / "steps.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds = line.split("\t")
        rc = int(rc)
        rows.append({"step": name, "exit_code": rc, "seconds": int(seconds),
                     "result": "ok" if rc == 0 else ("time limit" if rc == 124 else "failed")})
    return rows


def _tests(folder: Path) -> list[dict]:
    path = folder / "gpu_tests.xml"
    if not path.exists():
        return []
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("skipped", "failure", "error"):
            node = case.find(tag)
            if node is not None:
                outcome = {"skipped": "skipped", "failure": "failed", "error": "error"}[tag]
                detail = (node.get("message") or "").split("\n")[0][:300]
        tests.append({"test": case.get("name"), "outcome": outcome, "detail": detail,
                      "seconds": float(case.get("time") or 0)})
    return tests


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _cores_rows(folder: Path) -> list[str]:
    log = _read(folder / "cores_per_gpu.log") or ""
    keep = ("training FLOPs", "loader ", "B raw", "B prepared", "A (audio", "device-side JPEG", "==")
    return [line for line in log.splitlines() if line.startswith(keep)]


def build(folder: Path) -> dict:
    throughput = json.loads(_read(folder / "throughput.json") or "null")
    figures = {p.stem: json.loads(p.read_text()) for p in sorted((folder / "figures").glob("*.json"))}
    tests = _tests(folder)
    cuda = bool(throughput and throughput.get("cuda")) or any(t["outcome"] != "skipped" for t in tests)
    skipped = [f"{t['test']}: {t['detail']}" for t in tests if t["outcome"] == "skipped"]
    if not cuda:
        skipped += ["gpu_throughput.py on the GPU (ran the tiny configs on the CPU: CPU figures)",
                    "nvJPEG's decode cost in cores_per_gpu.py"]
    return {
        "python": platform.python_version(), "host": platform.node(), "cuda": cuda,
        "device": _read(folder / "device.txt") or (throughput.get("device") if throughput else None),
        "torch_before": _read(folder / "torch_before.txt"), "torch_after": _read(folder / "torch_after.txt"),
        "steps": _steps(folder), "gpu_tests": tests, "gpu_steps_skipped": skipped, "figures": figures,
        "throughput": throughput, "cores_per_gpu": _cores_rows(folder),
    }


def markdown(report: dict) -> str:
    lines = ["# emotrain GPU check", ""]
    device = report["device"] or "unknown"
    lines.append(f"Device: **{device}**; CUDA: **{'yes' if report['cuda'] else 'no'}**; Python {report['python']}; "
                 f"torch {report['torch_before']} before, {report['torch_after']} after"
                 + (" (unchanged)" if report["torch_before"] == report["torch_after"] else " (CHANGED)"))
    if not report["cuda"]:
        lines += ["", "**No CUDA device: the GPU steps were skipped and the figures below are CPU figures "
                  "(tiny configs). The GPU run is still owed.**"]
    lines += ["", "## Steps", "", "| step | result | exit code | seconds |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['result']} | {s['exit_code']} | {s['seconds']} |" for s in report["steps"]]
    lines += ["", "## GPU tests", "", "| test | outcome | detail |", "|---|---|---|"]
    lines += [f"| {t['test']} | {t['outcome']} | {t['detail']} |" for t in report["gpu_tests"]]
    if report["gpu_steps_skipped"]:
        lines += ["", "## GPU steps skipped", ""] + [f"- {item}" for item in report["gpu_steps_skipped"]]
    memory = {k: v for k, v in report["figures"].items() if k.startswith("rtx3060_")}
    if memory:
        lines += ["", "## RTX 3060 configs under a 12 GiB cap", "",
                  "| model | peak allocated GiB | peak reserved GiB | micro-batch | largest that fits |", "|---|---|---|---|---|"]
        lines += [f"| {k[8:]} | {v['train_peak_allocated_gib']:.2f} | {v['train_peak_reserved_gib']:.2f} | "
                  f"{v['micro_batch_size']} | {v['largest_micro_batch']} |" for k, v in memory.items()]
    others = {k: v for k, v in report["figures"].items() if not k.startswith("rtx3060_")}
    if others:
        lines += ["", "## Other measurements", ""] + [f"- {k}: `{json.dumps(v)}`" for k, v in others.items()]
    tp = report["throughput"]
    if tp:
        note = " (CPU figures, tiny configs)" if tp.get("cpu_figures") else ""
        peak = f"{tp['peak_tflops']:g} TFLOP/s" if tp.get("peak_tflops") else "unknown"
        lines += ["", f"## Throughput{note}", "", f"dense bf16 peak: {peak}", "",
                  "| model | feed | turns/s | data wait | BERT tokens/s (padded) | GFLOP/turn | TFLOP/s | MFU |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in tp["rows"]:
            mfu = f"{r['mfu'] * 100:.1f}%" if r.get("mfu") is not None else "n/a"
            lines.append(f"| {r['model']} | {r['feed']} | {r['turns_per_s']:.1f} | {r['data_wait_share'] * 100:.1f}% | "
                         f"{r['bert_positions_per_s']:.0f} | {r['gflop_per_turn']:.2f} | {r['achieved_tflops']:.3f} | {mfu} |")
    if report["cores_per_gpu"]:
        lines += ["", "## Loader CPU per GPU (cores_per_gpu.py)", "", "```"] + report["cores_per_gpu"] + ["```"]
    lines += ["", "What the figures mean: README, \"Run on a GPU\"."]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(sys.argv[1])
    report = build(folder)
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (folder / "report.md").write_text(text)
    print(text)
    failed = [s for s in report["steps"] if s["exit_code"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
