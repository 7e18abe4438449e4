"""The recommend task: the top-k unseen items of every user, from the registry's champion.

    python -m ncf_model recommend --config configs/ml-100k.yaml --logical-date 2026-11-23

Scores every user of this date's data with the champion (downloaded from MLflow when it is
an earlier run's model) and writes topk/; users the champion does not know get popular
items instead (a hybrid champion scores them from their side features).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch

from jobs.lake import layout
from ncf_model import champion, tracking
from ncf_model.config import NCFConfig
from ncf_model.data import load_positives
from ncf_model.stages.common import StageError, manifest_entry, serving_folder
from ncf_model.topk import popularity_top_k, recommend_top_k

log = logging.getLogger(__name__)


def run(cfg: NCFConfig, paths: layout.LakePaths, device: torch.device,
                  model_name: str) -> int:
    """Top-k unseen items for every user of this run's data, from the registry's champion.

    Users the champion does not know (cold start: new since it was trained) get the most
    popular unseen training items instead, marked source = popularity in topk/. A hybrid
    champion knows them from their side features: they are scored by it (source = model).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest_entry(paths, "evaluate", "recommend")
    prepared = manifest_entry(paths, "prepare", "recommend")
    n_users, n_items = int(prepared["n_users"]), int(prepared["n_items"])
    ref = tracking.champion(model_name)
    if ref is None:
        raise StageError(f"{model_name} has no champion: no version has passed the gate; "
                         "nothing to recommend with")
    positives = load_positives(paths)
    seen_user = torch.cat([p.user for p in positives.values()])  # never recommended again
    seen_item = torch.cat([p.item for p in positives.values()])
    k = cfg.recommend.k
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ncf-champion-") as scratch:
        scorer, known = champion.load_for_lake(serving_folder(ref, paths, Path(scratch)),
                                               paths, device)
        # all_items: one (chunk x n_items) matrix per chunk (MF, GMF, MLP and NeuMF with the
        # first layer split, EASE, SASRec, ...); pairs: every (user, item) pair through
        # forward (a champion remapped onto another day's indices).
        scoring = "all_items" if callable(getattr(scorer, "score_all_items", None)) else "pairs"
        items, scores = recommend_top_k(scorer, n_users=n_users, n_items=n_items,
                                        seen_user=seen_user, seen_item=seen_item, k=k,
                                        chunk_users=cfg.recommend.chunk_users, device=device)
    cold = (~known).nonzero().flatten()
    source = [layout.SOURCE_MODEL] * n_users
    if cold.numel():
        counts = torch.bincount(positives[layout.TRAIN].item.long(), minlength=n_items)
        items[cold], scores[cold] = popularity_top_k(counts, users=cold, seen_user=seen_user,
                                                     seen_item=seen_item, k=k)
        for user in cold.tolist():
            source[user] = layout.SOURCE_POPULARITY
    seconds = time.perf_counter() - started
    users = torch.arange(n_users, dtype=torch.int32).repeat_interleave(k)
    ranks = torch.arange(1, k + 1, dtype=torch.int32).repeat(n_users)  # 1 = best
    table = pa.Table.from_arrays(
        [pa.array(users.numpy()), pa.array(ranks.numpy()),
         pa.array(items.flatten().to(torch.int32).numpy()),
         pa.array(scores.flatten().to(torch.float32).numpy()),
         pa.array([s for s in source for _ in range(k)], type=pa.string())],
        schema=layout.arrow_schema(layout.TOPK_SCHEMA))
    with layout.staged_dir(paths.path(layout.TOPK)) as tmp:
        tmp.mkdir(parents=True)
        pq.write_table(table, tmp / "part-00000.parquet")
    layout.update_manifest(paths, "recommend", {
        "rows": table.num_rows, "users": n_users, "k": k, "seconds": round(seconds, 3),
        "scoring": scoring,
        "popularity_users": int(cold.numel()), "model_name": model_name,
        "model_version": ref.version, "run_id": ref.run_id,
        "params": dataclasses.asdict(cfg.recommend),
    })
    log.info("top-%d for %d users (%d cold-start -> popularity) with %s version %s in %.2fs "
             "(%s scoring, chunks of %d users) -> %s", k, n_users, cold.numel(), model_name,
             ref.version, seconds, scoring, cfg.recommend.chunk_users, paths.path(layout.TOPK))
    return int(table.num_rows)
