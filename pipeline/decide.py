"""The decide step of the cleaning job: this run's candidates get their verdicts
(off-class, then de-duplication against each other and the kept index, then the
split) from their metadata in a Ray task of its own, and the finalize tasks apply them.

Why a module of its own: it is the one stage whose input is the whole run (every
candidate's hashes, classes and groups), so it is where the memory goes at scale
(`scripts/bench/scale.py` times these functions): a worker's, not the driver's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from common.storage import join
from pipeline import dedup, offclass
from pipeline.config import CleanConfig
from pipeline.decision_shards import ShardRows, stage_decisions, write_index
from pipeline.finalize import finalize_stage
from pipeline.output import read_shards
from pipeline.overrides import OVERRIDE
from pipeline.remote import RowTask
from pipeline.sink import Shards, ShardWrite
from pipeline.split import split_ids
from pipeline.tables import INDEX, INDEX_COLUMNS
from pipeline.vectors import VECTOR_COLUMNS, VectorRows, of_shards


def deduplicate_and_finalize(
    normalised: Shards,
    carried: dict[str, list[str]],
    rewritten: list[str],
    stage: str,
    run_id: str,
    cfg: CleanConfig,
) -> tuple[Shards, dict[str, Any]]:
    """Decide on this run's candidates from their metadata, in a Ray task of its own
    (`decide_in_task`), then apply the decisions to their pixels in Ray tasks;
    carried-over shards that had to be rewritten come along. The driver reads no row:
    the decide task hands the decisions over as files, a candidate shard's at a time
    (`pipeline.decision_shards`), which the finalize and index tasks read."""
    index_rewrites = [join(stage, r) for r in rewritten if r.startswith(INDEX + "/")]
    shards = ShardRows.of(normalised.writes)
    final, stats = Shards(), {}
    if shards.rows.sum():
        items, kept, stats = decide_in_task(shards, carried, index_rewrites, stage, cfg)
        final = finalize_stage(items, stage, cfg.storage)
        final.writes += write_index(items, kept, stage, run_id, cfg.storage, cfg.dedup.verified)
    final.writes += [ShardWrite(rel.split("/", 1)[0], join(stage, rel), 0, 0) for rel in rewritten]
    return final, stats


def stage_decided(
    shards: ShardRows,
    carried: dict[str, list[str]],
    index_rewrites: list[str],
    stage: str,
    cfg: CleanConfig,
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """Read the candidates' deciding columns and the kept index, decide
    (`decide_with_off_class`) and stage each candidate shard's decisions: (the finalize
    items, the rows kept, the counts). The vectors and signals are read by the tasks
    that use them (`pipeline.vectors`)."""
    existing, existing_uris = _existing_index(cfg, carried, index_rewrites)
    candidates = read_shards(shards.uris, cfg.storage, DECIDING_COLUMNS)
    shards.check(candidates.num_rows)
    # Row ids: the kept index's rows, then the candidates' (`pipeline.vectors`).
    vectors = of_shards(
        existing_uris + shards.uris, cfg.storage, existing.num_rows + candidates.num_rows
    )
    signals = of_shards(shards.uris, cfg.storage, candidates.num_rows)
    decisions, stats = decide_with_off_class(existing, candidates, cfg, vectors, signals)
    del candidates, existing
    items = stage_decisions(decisions.rows, shards, stage, cfg.storage)
    return items, decisions.kept, stats


# Its memory grows with the run's rows (every candidate's names, hashes and arrays:
# ~350 bytes a row at 10M), so it is a worker's, not the driver's: a cluster's head
# stays small whatever the lake's size (docs/cluster.md).
decide_in_task = RowTask(stage_decided, "the decide step")


# What the decide task holds of the candidates through the decide step (the
# off-class stage, de-duplication's names, the split); the index's other columns, the
# vectors included, are read by the task writing it.
DECIDING_COLUMNS = ["source_uri", "class_name", "label", "sha256", "group", OVERRIDE]
# What de-duplication alone reads, and turns into arrays before it clusters: read then
# (`decide`), so the decide task does not hold them through clustering and the split
# (at 3M candidates ~150 MB).
SIGNAL_COLUMNS = [
    "phash", "source_width", "source_height", "source_format", "seen_order", "low_detail",
    "hash_stability",
]  # fmt: skip


@dataclass
class Decisions:
    """This run's decisions on its candidates, as numbers in the candidates' order:
    de-duplication's (on the rows off-class did not reject), each kept row's split and
    the off-class columns. The table the finalize tasks read is built a candidate shard
    at a time (`rows`): the decide task never holds every decision's strings (cluster
    ids, keepers' URIs, reasons; at 1M candidates ~270 MB at once, built and copied)."""

    decided: dedup.Decided  # on the offered rows, in order
    split: np.ndarray  # int8 per offered row: an index into `split_names`, -1: none
    split_names: list[str]
    off: pa.Table  # the off-class stage's columns, a row per candidate
    offered_before: np.ndarray  # per candidate and one past the last: offered rows before

    @property
    def kept(self) -> int:
        return int(self.decided.keep.sum())

    def rows(self, start: int, stop: int) -> pa.Table:
        """The decisions on candidates `start` to `stop`: the rows offered to
        de-duplication in order, then the off-class rejections, all with the off-class
        columns (`offclass.decisions_with_off_class`)."""
        a, b = int(self.offered_before[start]), int(self.offered_before[stop])
        split = self.split[a:b]
        names = pa.array(self.split_names, pa.string())
        table = self.decided.table(a, b).append_column(
            "split", names.take(pa.array(split, mask=split < 0))
        )
        return offclass.decisions_with_off_class(table, self.off.slice(start, stop - start))


def decide_with_off_class(
    existing: pa.Table,
    candidates: pa.Table,
    cfg: CleanConfig,
    vectors: VectorRows | None = None,
    signals: VectorRows | None = None,
) -> tuple[Decisions, dict[str, Any]]:
    """Off-class photos first (`pipeline.offclass`: they are not offered to
    de-duplication, so they never stand in for a copy), then `decide` on the rest.
    `vectors`: where the rows' vectors lie (`existing`'s, then the candidates'), when
    the tables do not carry them; read only with verification (none without).
    `signals`: where the candidates' `SIGNAL_COLUMNS` lie, when `candidates` lacks them."""
    if not cfg.dedup.verified:
        vectors = None
    off = offclass.off_class_stage(candidates, existing, cfg.off_class, vectors)
    offered = ~np.asarray(off[offclass.REJECT].to_numpy(zero_copy_only=False), dtype=bool)
    # A filter copies every column, even when it keeps every row (the usual case).
    rest = candidates if offered.all() else candidates.filter(pa.array(offered))
    if rest.num_rows:
        if vectors is not None:
            e = existing.num_rows
            vectors = vectors.take(np.concatenate([np.arange(e), e + np.flatnonzero(offered)]))
        if signals is not None and not offered.all():
            signals = signals.take(np.flatnonzero(offered))
        decided, (names, split), stats = decide(existing, rest, cfg, vectors, signals)
    else:
        decided, (names, split), stats = dedup.Decided.none(), ([], np.zeros(0, np.int8)), {}
    stats["off_class"] = offclass.summary(off, cfg.off_class)
    offered_before = np.concatenate([[0], np.cumsum(offered)])
    return Decisions(decided, split, names, off, offered_before), stats


def _existing_index(
    cfg: CleanConfig, carried: dict[str, list[str]], rewritten: list[str]
) -> tuple[pa.Table, list[str]]:
    """The hash index of the images this version keeps from the previous one, without
    its vectors, and the shards it was read from (the tasks read the vectors there)."""
    uris = [join(cfg.output_uri, rel) for rel in carried.get(INDEX, [])] + rewritten
    columns = [c for c in INDEX_COLUMNS if c not in VECTOR_COLUMNS]
    return (read_shards(uris, cfg.storage, columns) if uris else pa.table({})), uris


def dedup_input(table: pa.Table) -> pa.Table:
    """The de-duplication stage ranks resolution by the source's size: normalised images
    of every large source share the same 512 px side."""
    table = table.drop_columns(
        [c for c in ("width", "height", "_shard") if c in table.schema.names]
    )
    sizes = {"source_width": "width", "source_height": "height"}
    return table.rename_columns([sizes.get(c, c) for c in table.column_names])


def decide(
    existing: pa.Table,
    candidates: pa.Table,
    cfg: CleanConfig,
    vectors: VectorRows | None = None,
    signals: VectorRows | None = None,
) -> tuple[dedup.Decided, tuple[list[str], np.ndarray], dict[str, Any]]:
    """De-duplicate the candidates against each other and the kept index, then split:
    the decisions, (the split names, each candidate's split as an index into them or -1)
    and the counts. `vectors`: where the rows' vectors lie (`existing`'s, then the
    candidates'); `signals`: where the candidates' `SIGNAL_COLUMNS` lie, if they lack
    them (read by de-duplication, and released once it has its arrays)."""
    more = None if signals is None else partial(_signals, signals)
    result = dedup.deduplicate(
        dedup_input(candidates),
        cfg.dedup,
        dedup_input(existing) if existing.num_rows else None,
        vectors,
        more,
    )
    decided, summary = result.decided, result.summary
    # The decisions are in the candidates' order (`dedup.DedupResult`): the kept rows'
    # columns are taken by position (the columns the split needs), with no join.
    kept = np.flatnonzero(decided.keep)
    # The kept rows' URIs are not copied: the split reads them where they lie.
    needed = [c for c in SPLIT_COLUMNS if c in candidates.column_names and c != "source_uri"]
    kept_new = candidates.select(needed).filter(pa.array(decided.keep))
    uri = candidates["source_uri"]
    if existing.num_rows:  # cluster ids as the kept index holds them
        units = pa.concat_tables(
            [
                _split_input(existing.drop_columns(["source_uri"])),
                _split_input(kept_new, {"cluster_id": decided.clusters(kept), "split": None}),
            ]
        )
        e = existing.num_rows
        uri_rows = (
            pa.chunked_array(existing["source_uri"].cast(uri.type).chunks + uri.chunks, uri.type),
            np.concatenate([np.arange(e), e + kept]),
        )
    else:  # a cluster's number: its keeper (two keepers never share a sha256)
        cluster = pa.array(decided.keeper[kept], pa.int64())
        units = _split_input(kept_new, {"cluster_id": cluster, "split": None})
        uri_rows = (uri, kept)
    del kept_new
    names, ids, split_stats = split_ids(units, cfg.split, [], cfg.input_uri, uri_rows)
    # The units are the existing rows, then the kept new ones in order; others get none.
    split = np.full(decided.num_rows, -1, np.int8)
    split[kept] = ids[existing.num_rows :]
    return decided, (names, split), {**summary, **split_stats}


def _signals(signals: VectorRows) -> pa.Table:
    return dedup_input(signals.read(SIGNAL_COLUMNS))


SPLIT_COLUMNS = ["source_uri", "class_name", "cluster_id", "group", "split"]


def _split_input(table: pa.Table, replace: dict[str, Any] | None = None) -> pa.Table:
    """The split's columns only (the rows also carry 1280-float embeddings), as strings
    but integer keys (`pipeline.split`); `replace`: columns given instead (None: all
    null), as are columns `table` lacks."""
    given = {c: table[c] for c in SPLIT_COLUMNS if c in table.column_names}
    given.update(replace or {})
    columns = [
        pa.nulls(table.num_rows, pa.string())
        if given.get(c) is None
        else given[c]
        if pa.types.is_integer(given[c].type)
        else given[c].cast(pa.string())
        for c in SPLIT_COLUMNS
    ]
    return pa.table(columns, names=SPLIT_COLUMNS)
