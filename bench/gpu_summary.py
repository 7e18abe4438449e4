"""The one summary table of bench/gpu_check.sh, from what its steps left in its work folder.

    python bench/gpu_summary.py <work>

<work>/steps.tsv holds one line per step (name, exit code, wall seconds, command); the
figures come from each step's log (train.log: bench/train.py's printout) or JSON
(dag.json: bench/dag_scale.py; recommend.json: bench/recommend.py). Prints a markdown
table, one row per step, and exits 1 when a step failed or timed out.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

TIMEOUT = 124  # timeout(1)'s exit code
# The lines of bench/train.py's printout that the table quotes.
TRAIN_FIGURES = {
    "samples/s": r"ours \(on-device epoch\)\s+([\d,]+) samples/s",
    "epoch s": r"ours \(on-device epoch\).*epoch ([\d.]+) s",
    "vs loader": r"ratio ours / baseline\s+([\d.]+)x",
    "full ranking s": r"full ranking of .* all users: ([\d.]+) s",
}


def _json(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return loaded


def train_figures(work: Path) -> str:
    log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
    found = []
    for name, pattern in TRAIN_FIGURES.items():
        match = re.search(pattern, log)
        if match:
            found.append(f"{name} {match.group(1)}")
    return "; ".join(found) or "no figures (see train.log)"


def dag_figures(work: Path) -> str:
    result = _json(work / "dag.json")
    if not result:
        return "no figures (see dag.log)"
    stages = {name: stage for name, stage in result["stages"].items() if "seconds" in stage}
    ok = sum(stage["state"] == "success" for stage in stages.values())
    slowest = max(stages, key=lambda name: stages[name]["seconds"], default="-")
    heaviest = max(stages, key=lambda name: stages[name]["peak_rss_gib"], default="-")
    shape = result["shape"]
    return (f"{shape['events']:,} events; {ok}/{len(result['stages'])} tasks ok; stages "
            f"{result['stage_seconds']:.0f} s (slowest {slowest} "
            f"{stages.get(slowest, {}).get('seconds', 0):.0f} s); peak RSS "
            f"{result['peak_rss_gib']:.1f} GiB ({heaviest}); served "
            f"{result.get('served_family')}")


def recommend_figures(work: Path) -> str:
    result = _json(work / "recommend.json")
    if not result:
        return "no figures (see recommend.log)"
    text = (f"{result['users']:,} users x {result['items']:,} items: split layer "
            f"{result['split_seconds']:.2f} s")
    if "naive_seconds" in result:
        text += (f", pairs {result['naive_seconds']:.2f} s for {result['naive_users']:,} "
                 f"users; same items {result['same_items']:.4f}")
    return text


FIGURES = {"train": train_figures, "dag": dag_figures, "recommend": recommend_figures}


def main(argv: list[str] | None = None) -> int:
    (folder,) = argv if argv is not None else sys.argv[1:]
    work = Path(folder)
    rows = [line.split("\t", 3) for line in (work / "steps.tsv").read_text().splitlines()
            if line.strip()]
    print("| step | status | seconds | figures | command |")
    print("|---|---|---:|---|---|")
    failed = False
    for name, code, seconds, command in rows:
        status = {"0": "ok", str(TIMEOUT): "timeout"}.get(code, f"failed ({code})")
        failed |= code != "0"
        print(f"| {name} | {status} | {float(seconds):.1f} | {FIGURES[name](work)} | "
              f"`{command}` |")
    total = sum(float(seconds) for _name, _code, seconds, _command in rows)
    print(f"| total | {'failed' if failed else 'ok'} | {total:.1f} | logs in {work} | |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
