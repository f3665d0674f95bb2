"""Cutting the rows into independent parts, so the keep decisions can run in Ray tasks.

Why this is exact: the clustering pass (`pipeline.dedup.cluster`) only ever lets a row
reach the units (rows of one sha256) in its own hash node and the nodes paired with it,
and exact copies travel as a unit. So the decisions of a row depend only on the rows of
its connected component in the graph unit - node - paired node, and running the pass
on any union of whole components, rows kept in their global order and keep-policy
ranks, gives every row the keeper the single pass gives it. The components come from
Ray tasks (`pipeline.dedup.components`); a part is a set of components of about
`rows_per_task` rows, and the driver only slices arrays for it.

Only nodes holding two units or a near pair link anything: every other node is left out
of the graph, which keeps it to a few edges per duplicate rather than one per row.
Existing rows (incremental runs) come along only in components that hold a new row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.dedup.components import unit_labels
from pipeline.dedup.rows import Rows
from pipeline.dedup.search import NearPairs


@dataclass
class Part:
    """One task's share: its rows as a `Rows` of their own (sha codes and node ids
    renumbered, order and ranks kept; `uri` and `cluster_id` hold row ids, the names
    stay on the driver), its near pairs, and where its rows came from."""

    rows: Rows
    node_of: np.ndarray  # per row, its node in this part (-1: not searched)
    pairs: NearPairs  # i, j: this part's node ids
    n_nodes: int
    row_ids: np.ndarray  # per row, its index in the whole `Rows`
    positions: np.ndarray  # per new row, its position in the caller's new table
    forced: np.ndarray  # per new row: a person decided to keep it


def component_labels(rows: Rows, node_of_row: np.ndarray, pairs: NearPairs) -> np.ndarray:
    """Per unit (sha code), the smallest unit of its component: units sharing a node,
    and units in two nodes of a near pair, are one component."""
    units = int(rows.sha_code.max(initial=-1)) + 1
    searched = node_of_row >= 0
    node_unit = np.unique(np.stack([node_of_row[searched], rows.sha_code[searched]]), axis=1)
    n_nodes = int(node_of_row.max(initial=-1)) + 1
    linking = np.bincount(node_unit[0], minlength=n_nodes) > 1
    linking[pairs.i] = True
    linking[pairs.j] = True
    linked = linking[node_unit[0]]
    # Vertices: units 0..units-1, then the nodes; every linking node holds a unit, so
    # each component's smallest vertex is a unit.
    a = np.concatenate([node_unit[1][linked], units + pairs.i])
    b = np.concatenate([units + node_unit[0][linked], units + pairs.j])
    return unit_labels(a, b, units)


def split_parts(
    rows: Rows,
    node_of_row: np.ndarray,
    pairs: NearPairs,
    forced: np.ndarray,
    rows_per_task: int,
) -> Iterator[Part]:
    """Whole components, about `rows_per_task` rows per part, one part at a time (the
    driver holds one part's slices at once). Always at least one part."""
    label = component_labels(rows, node_of_row, pairs)[rows.sha_code]
    e = rows.n_existing
    with_new = np.zeros(int(label.max(initial=-1)) + 1, dtype=bool)
    with_new[label[e:]] = True
    included = np.flatnonzero(with_new[label])  # every new row, and old ones beside them
    count = max(1, math.ceil(included.size / max(1, rows_per_task)))
    group = label[included] % count
    order = np.argsort(group, kind="stable")  # ascending row ids within a group
    bounds = np.searchsorted(group[order], np.arange(count + 1))
    node_group = np.full(int(node_of_row.max(initial=-1)) + 1, -1, dtype=np.int64)
    searched = included[node_of_row[included] >= 0]
    node_group[node_of_row[searched]] = group[node_of_row[included] >= 0]
    pair_group = node_group[pairs.i]
    for g in range(count):
        ids = included[order[bounds[g] : bounds[g + 1]]]
        yield _part(rows, ids, node_of_row, pairs, pair_group == g, forced)


def _part(
    rows: Rows,
    ids: np.ndarray,
    node_of_row: np.ndarray,
    pairs: NearPairs,
    in_part: np.ndarray,
    forced: np.ndarray,
) -> Part:
    """The rows `ids` (ascending) and the pairs `in_part` as a self-contained part."""
    e = rows.n_existing
    _, sha_code = np.unique(rows.sha_code[ids], return_inverse=True)  # order kept
    node_of = node_of_row[ids]
    nodes = np.unique(node_of[node_of >= 0])
    local_node = np.where(node_of >= 0, np.searchsorted(nodes, node_of), -1)
    i, j = (np.searchsorted(nodes, side[in_part]) for side in (pairs.i, pairs.j))
    part_pairs = dataclasses.replace(pairs, i=i, j=j, distance=pairs.distance[in_part])

    def take(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values[ids]

    part_rows = Rows(
        n_existing=int((ids < e).sum()),
        uri=ids,  # a task needs no names: row ids stand in (`pipeline.dedup.keep`)
        classes=rows.classes,
        class_code=rows.class_code[ids],
        sha_code=sha_code.astype(np.int64),
        hashes=rows.hashes[ids],
        low_detail=rows.low_detail[ids],
        degenerate=rows.degenerate[ids],
        strict=rows.strict[ids],
        searchable=rows.searchable[ids],
        rank=rows.rank[ids],
        cluster_id=ids,
        embedding=take(rows.embedding),
        colour=take(rows.colour),
        grey=take(rows.grey),
        has_grey=take(rows.has_grey),
    )
    new_ids = ids[ids >= e]
    return Part(
        rows=part_rows,
        node_of=local_node.astype(np.int64),
        pairs=part_pairs,
        n_nodes=int(nodes.size),
        row_ids=ids,
        positions=new_ids - e,
        forced=forced[new_ids - e],
    )
