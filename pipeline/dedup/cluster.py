"""Clustering: keepers are picked greedily in keep-policy order; a copy goes to a keeper
it is within the threshold *of*, so a chain A~B~C never merges A and C through B. When
several keepers could take it, the closest one does (`assign_to`). The pass is
sequential, but only within a connected component of units and near pairs, so it runs
in Ray tasks on whole components (`pipeline.dedup.parts`, `pipeline.dedup.keep`).
"""

from __future__ import annotations

import numpy as np

from pipeline.dedup.config import ASSIGN_CLOSEST, ASSIGN_FIRST, ASSIGN_MODES
from pipeline.dedup.rows import Rows
from pipeline.dedup.search import NearPairs
from pipeline.dedup.verify import Verifier


def _csr(keys: np.ndarray, values: np.ndarray, size: int) -> tuple[list[int], np.ndarray]:
    """Group `values` by `keys` in 0..size-1: members of k are values[ptr[k]:ptr[k+1]].
    The members stay an array: as a Python list each would cost ~36 bytes, not 4-8,
    and there are two per near pair (hundreds of millions at 1M images and t=14)."""
    order = np.argsort(keys, kind="stable")
    ptr = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=size), out=ptr[1:])
    return ptr.tolist(), values[order]


class Clusterer:
    """Assigns every new row the row it is kept in place of (itself, for a keeper).

    Rows are visited best-first (keep-policy order); existing rows are keepers and are
    never claimed, so rows kept by earlier runs stay kept. A copy is always within the
    threshold (and verified) of its keeper *itself*, so chains never merge. Exact copies
    (same sha256) go as one unit. Which keeper a near copy goes to (`assign`):

    - 'closest': every keeper offers itself to the undecided units in its own and the
      neighbouring hash nodes; at its turn a unit joins the offer that verifies it and is
      most alike (`_closest_keeper`), or, if none does, becomes a keeper.
    - 'first' (push): each keeper claims every still-unclaimed unit it verifies, so the
      first keeper in keep-policy order wins, however much closer a later one is.
    Both keep the same rows: a unit is kept exactly when no keeper chosen before it
    (existing ones first, then by rank) verifies it, so by induction the keepers are the
    same; only which keeper a copy is dropped for (its cluster) differs.
    """

    def __init__(
        self,
        rows: Rows,
        node_of: np.ndarray,
        pairs: NearPairs,
        n_nodes: int,
        near_across_classes: bool,
        verifier: Verifier | None = None,
        assign: str = ASSIGN_CLOSEST,
    ):
        if assign not in ASSIGN_MODES:
            raise ValueError(f"unknown assign_to {assign!r}; choose one of {ASSIGN_MODES}")
        self.assign = assign
        self.rows = rows
        self.verifier = verifier
        self.node_of = node_of
        self.near_across_classes = near_across_classes
        self.unit_class = _unit_classes(rows)
        self.row_class = rows.class_code.tolist()
        self.row_unit = rows.sha_code.tolist()
        new = np.arange(rows.n_existing, rows.count)
        searchable_new = new[rows.searchable[new]]
        node_unit = np.unique(
            np.stack([node_of[searchable_new], rows.sha_code[searchable_new]]), axis=1
        )
        self.unit_ptr, units = _csr(node_unit[0], node_unit[1], n_nodes)
        self.units = units.tolist()  # one per row: plain list, read in the inner loop
        ids = np.int32 if n_nodes < 2**31 else np.int64

        def both(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts, dtype=ids)

        self.nbr_ptr, self.nbrs = _csr(both([pairs.i, pairs.j]), both([pairs.j, pairs.i]), n_nodes)
        self.units_in_node = np.diff(self.unit_ptr)
        self.degree = np.diff(self.nbr_ptr)
        existing_nodes = node_of[: rows.n_existing]
        self.existing_in_node = np.bincount(existing_nodes[existing_nodes >= 0], minlength=n_nodes)
        self.node_list = node_of.tolist()  # plain lists: the loops below are Python
        # The nearest hash ranks keepers only without verification (see _closest_keeper).
        self.hash_list = rows.hashes.tolist() if verifier is None else []

    def run(self) -> np.ndarray:
        """Per new row, the row kept in its place (itself if it is a keeper)."""
        rows, e = self.rows, self.rows.n_existing
        keeper = np.full(int(rows.sha_code.max(initial=-1)) + 1, -1, dtype=np.int64)
        by_rank = np.argsort(rows.rank[:e])
        codes, first = np.unique(rows.sha_code[by_rank], return_index=True)
        keeper[codes] = by_rank[first]  # exact copies of existing rows, before any near one
        unit_keeper: list[int] = keeper.tolist()  # by sha code
        reaching = by_rank[self._touches_new(by_rank)].tolist()
        new = np.arange(e, rows.count)
        alone = self._alone(new, unit_keeper)
        order = new[~alone][np.argsort(rows.rank[new[~alone]])].tolist()
        if self.assign == ASSIGN_FIRST:
            self._push(reaching, order, unit_keeper)
        else:
            self._pull(reaching, order, unit_keeper)
        result = np.asarray(unit_keeper, dtype=np.int64)[rows.sha_code[new]]
        result[alone] = new[alone]
        return result

    def _push(self, existing: list[int], order: list[int], unit_keeper: list[int]) -> None:
        """'first': existing keepers, then each new keeper in `order`, claim their copies."""
        for row in existing:
            self._claim_near(row, unit_keeper)
        codes_of = self.row_unit
        for row in order:
            if unit_keeper[codes_of[row]] < 0:
                unit_keeper[codes_of[row]] = row
                self._claim_near(row, unit_keeper)

    def _pull(self, existing: list[int], order: list[int], unit_keeper: list[int]) -> None:
        """'closest': a keeper offers itself to every undecided unit it could take; each
        unit, at its best row's turn in `order`, joins the closest verified offer, or
        becomes a keeper. Offers are made by keepers (far fewer than rows), so this
        pass walks the neighbour lists as often as 'first' does."""
        offers: dict[int, list[int]] = {}  # unit -> keepers, in the order they were chosen
        for row in existing:
            self._offer(row, unit_keeper, offers)
        codes_of = self.row_unit
        for row in order:
            unit = codes_of[row]
            if unit_keeper[unit] >= 0:
                continue
            keeper = self._closest_keeper(row, offers.pop(unit, []))
            unit_keeper[unit] = row if keeper < 0 else keeper
            if keeper < 0:
                self._offer(row, unit_keeper, offers)

    def _offer(self, row: int, keeper: list[int], offers: dict[int, list[int]]) -> None:
        for unit in self._reachable(row, keeper):
            offers.setdefault(unit, []).append(row)

    def _closest_keeper(self, row: int, keepers: list[int]) -> int:
        """Of the `keepers` that reached `row`'s unit, the one it is dropped in favour of,
        or -1: the verified one with the closest colour layout, or without verification
        the nearest hash. Ties go to the keeper chosen first (listed first)."""
        if not keepers:
            return -1
        if self.verifier is not None:
            return self.verifier.closest(row, keepers)
        if len(keepers) == 1:  # within the threshold: it reached this unit
            return keepers[0]
        hashes, own = self.hash_list, self.hash_list[row]
        return min(keepers, key=lambda k: (hashes[k] ^ own).bit_count())  # first on a tie

    def _claim_near(self, row: int, keeper: list[int]) -> None:
        """`row` keeps in place of every unclaimed unit it reaches that it verifies."""
        found = self._reachable(row, keeper)
        if self.verifier is not None and found:
            found = self.verifier(row, found)
        for unit in found:
            keeper[unit] = row

    def _reachable(self, row: int, keeper: list[int]) -> list[int]:
        """The undecided units whose hash is within the threshold of keeper `row` (of its
        own class only, unless near copies may conflict across classes)."""
        node = self.node_list[row]
        if node < 0:
            return []
        own_unit, own_class = self.row_unit[row], self.row_class[row]
        found = []
        for near in [node, *self.nbrs[self.nbr_ptr[node] : self.nbr_ptr[node + 1]].tolist()]:
            for unit in self.units[self.unit_ptr[near] : self.unit_ptr[near + 1]]:
                if keeper[unit] >= 0 or unit == own_unit:  # own unit: decided by the caller
                    continue
                if self.near_across_classes or self.unit_class[unit] == own_class:
                    found.append(unit)
        return found

    def _touches_new(self, rows: np.ndarray) -> np.ndarray:
        """Existing rows whose node could reach a new unit (the others claim nothing)."""
        reaches = (self.units_in_node > 0) | (self.degree > 0)
        return _at(reaches, self.node_of[rows], False)

    def _alone(self, new: np.ndarray, keeper: list[int]) -> np.ndarray:
        """New rows no one can claim and that claim no one: their own keepers, no loop."""
        code = self.rows.sha_code[new]
        unit_size = np.bincount(code, minlength=len(keeper))
        lonely = (self.units_in_node == 1) & (self.degree == 0) & (self.existing_in_node == 0)
        unclaimed = np.asarray(keeper, dtype=np.int64)[code] < 0
        return (unit_size[code] == 1) & unclaimed & _at(lonely, self.node_of[new], True)


def _unit_classes(rows: Rows) -> list[int]:
    """Per exact-copy unit (sha code), its class code, or -1 if its copies span classes."""
    n_units = int(rows.sha_code.max(initial=-1)) + 1
    pairs = np.unique(np.stack([rows.sha_code, rows.class_code]), axis=1)
    classes_per_unit = np.bincount(pairs[0], minlength=n_units)
    unit_class = np.full(n_units, -1, dtype=np.int64)
    single = classes_per_unit[pairs[0]] == 1
    unit_class[pairs[0][single]] = pairs[1][single]
    return unit_class.tolist()


def _at(per_node: np.ndarray, node: np.ndarray, missing: bool) -> np.ndarray:
    """per_node[node], and `missing` where node is -1 (a row left out of the search)."""
    return np.append(per_node, missing)[node]
