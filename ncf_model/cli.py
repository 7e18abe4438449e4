"""Command line of the torch stages: parses, sets threads and the device, dispatches.

    python -m ncf_model train      --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m ncf_model evaluate   --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m ncf_model recommend  --config configs/ml-100k.yaml --logical-date 2026-11-23
    python -m ncf_model candidates --config configs/ml-100k.yaml --logical-date 2026-11-23

Each stage lives in `ncf_model/stages/<stage>.py` (its `run`); its result is printed as the
last stdout line (the Airflow task's XCom). evaluate exits SKIP_EXIT_CODE (Airflow: skipped,
so nothing new is published) when the champion gate refuses and `evaluate.on_refusal` is
`skip`. Each stage records its counts and parameters in the run's `_manifest.json`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import torch

from jobs.lake import layout
from jobs.lake.cli import configure_logging, lake_root, stage_parser
from jobs.lake.protocol import SKIP_EXIT_CODE
from ncf_model.config import NCFConfig, load_ncf_config
from ncf_model.stages import candidates, evaluate, recommend, train
from ncf_model.stages.common import StageError
from ncf_model.train import select_device

__all__ = ["SKIP_EXIT_CODE", "StageError", "main"]

log = logging.getLogger(__name__)

ENV_TORCH_THREADS = "NCF_TORCH_THREADS"  # deployment setting: torch CPU threads


def _paths(cfg: NCFConfig, args: argparse.Namespace) -> layout.LakePaths:
    return layout.LakePaths(lake_root(args.lake_root), cfg.dataset, args.logical_date)


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("torch stages: train, candidates, evaluate, recommend")
    parser.prog = "python -m ncf_model"
    parser.add_argument("stage", choices=("train", "candidates", "evaluate", "recommend"))
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when available)")
    parser.add_argument("--model-name",
                        help="registered model (default: publish.model_name, else ncf-<dataset>)")
    args = parser.parse_args(argv)
    configure_logging()

    threads = os.environ.get(ENV_TORCH_THREADS)
    if threads:
        # On a small shared node, torch's intra-op threads spin against other processes
        # (measured: 2 threads ran 5-25x slower than 1 beside a Spark JVM on 2 cores).
        torch.set_num_threads(int(threads))
    cfg = load_ncf_config(args.config)
    paths = _paths(cfg, args)
    device = select_device(args.device)
    log.info("%s %s for %s on %s", args.stage, cfg.dataset, paths.logical_date, device)
    model_name = args.model_name or cfg.model_name
    code = 0
    if args.stage == "train":
        result: object = train.run(cfg, paths, device)
    elif args.stage == "evaluate":
        result, promoted = evaluate.run(cfg, paths, device, model_name)
        if not promoted and cfg.evaluate.on_refusal == "skip":
            log.warning("nothing new is published: the table keeps serving the champion's "
                        "set (exit %d: Airflow skips recommend and publish)", SKIP_EXIT_CODE)
            code = SKIP_EXIT_CODE
    elif args.stage == "candidates":
        result = candidates.run(cfg, paths, device)
    else:
        result = recommend.run(cfg, paths, device, model_name)
    # The last stdout line is the Airflow task's XCom (BashOperator).
    sys.stdout.write(f"{result}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
