"""Stage: assign each kept image to train / test (/ val) without leaking across the split.

A *unit* is everything that must sit on one side: rows joined by a near-duplicate
cluster, by a user-given group key (a regex on the path, or a manifest column such
as a video id), or by an extra "similar" link. Units that already have a split keep
it, so re-running or adding files never moves an assigned image. New units are
assigned per class, in a deterministic pseudo-random order, each to the split that is
furthest below its target share: the split is stratified by class and stable.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from common.config import option
from common.dataset import TEST, TRAIN, VAL
from common.storage import StorageConfig, filesystem
from pipeline import split_order as order
from pipeline import split_units as units
from pipeline.chunked import take


@dataclass
class SplitConfig:
    train_fraction: float = option(
        0.7, "Share of each class's images in the train split", above=0, max=1
    )
    val_fraction: float = option(
        0.0, "Share in a validation split (the rest is test)", min=0, max=1
    )
    group_regex: str | None = option(
        None,
        "Regex on the source path whose match (first group if any) keeps files together, "
        r"e.g. 'V_[A-Z]+_\d+' for video frames",
    )
    group_manifest_uri: str | None = option(
        None, "CSV or Parquet file with a group column for each file (e.g. a video id)"
    )
    group_manifest_key: str = option(
        "file", "Column of the group manifest holding the file's path relative to the lake root"
    )
    group_manifest_column: str = option("video", "Column of the group manifest to group by")

    def targets(self) -> dict[str, float]:
        shares = {
            TRAIN: self.train_fraction,
            VAL: self.val_fraction,
            TEST: 1.0 - self.train_fraction - self.val_fraction,
        }
        if shares[TEST] < 0 and shares[TEST] > -1e-9:  # 1 - 0.8 - 0.2 is -5.6e-17
            shares[TEST] = 0.0
        if min(shares.values()) < 0 or self.train_fraction <= 0:
            raise ValueError(f"split fractions must be in [0, 1] and sum to <= 1: {shares}")
        return {name: share for name, share in shares.items() if share > 0}


def load_group_manifest(cfg: SplitConfig, storage: StorageConfig) -> dict[str, str]:
    """{path relative to the lake root: group} from a CSV or Parquet manifest."""
    if not cfg.group_manifest_uri:
        return {}
    fs, path = filesystem(cfg.group_manifest_uri, storage)
    data = fs.cat_file(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    else:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    key, column = cfg.group_manifest_key, cfg.group_manifest_column
    if rows and (key not in rows[0] or column not in rows[0]):
        raise ValueError(f"group manifest needs columns {key!r} and {column!r}")
    return {str(r[key]).lstrip("/"): str(r[column]) for r in rows if r[column] not in (None, "")}


def group_of(relative_path: str, cfg: SplitConfig, manifest: dict[str, str]) -> str | None:
    """The user-given group of one file, or None when no rule applies to it."""
    if relative_path in manifest:
        return f"manifest:{manifest[relative_path]}"
    if cfg.group_regex:
        match = re.search(cfg.group_regex, relative_path)
        if match:
            return f"regex:{match.group(1) if match.groups() else match.group(0)}"
    return None


def assign_splits(
    kept: pa.Table, cfg: SplitConfig, links: Iterable[tuple[str, str]] = (), root: str = ""
) -> tuple[list[str], dict[str, int]]:
    """`assign_split_array` as a list (the split names are shared, not copied per row)."""
    names, split, stats = split_ids(kept, cfg, links, root)
    return np.array(names, dtype=object)[split].tolist(), stats


def assign_split_array(
    kept: pa.Table, cfg: SplitConfig, links: Iterable[tuple[str, str]] = (), root: str = ""
) -> tuple[pa.Array, dict[str, int]]:
    """Split of every row of `kept` (columns source_uri, class_name, cluster_id, group,
    split: null or empty for rows not assigned yet), as strings, and a few counts. Key
    columns (cluster_id, group) may be integers instead of strings: only equal keys
    matter.

    New units are ordered by their paths relative to `root` (the lake's URI), so the
    same lake copied to another bucket or folder gets the same split."""
    names, split, stats = split_ids(kept, cfg, links, root)
    return pa.array(names, pa.string()).take(pa.array(split)), stats


def split_ids(
    kept: pa.Table,
    cfg: SplitConfig,
    links: Iterable[tuple[str, str]],
    root: str,
    uri_rows: tuple[pa.ChunkedArray, np.ndarray] | None = None,
) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """The split names (the targets', then other names already assigned) and each row's
    index into them: columns and integer arrays only (`pipeline.split_units`).
    `uri_rows`: (a URI column, the row of it each row of `kept` is), given instead of
    `kept`'s source_uri, so a caller holding every candidate's URIs need not copy the
    kept ones' (at 10M candidates ~500 MB)."""
    targets = cfg.targets()
    uris, at = _uris(kept, links, uri_rows)
    keys = [units.keys(kept[c]) for c in ("cluster_id", "group")]
    unit = units.units_of(keys, uris if at is None else None, links, kept.num_rows)
    n_units = int(unit.max()) + 1 if unit.size else 0
    names, split = _assigned(units.strings(kept["split"]), list(targets))
    cls, class_names = units.codes(units.strings(kept["class_name"]), null=True)

    # Units holding assigned rows: their new rows join the side most of them are on.
    old_units, side, sides = units.Pairs(unit, split, len(names), np.flatnonzero(split >= 0)).mode()
    unit_side = np.full(n_units, -1, units.ID)
    unit_side[old_units] = side
    split = np.where(split >= 0, split, unit_side[unit])
    counts = _counts(cls, split, len(class_names), len(names))

    # New units: balanced per class, in a stable pseudo-random order of their first path.
    new_units = np.flatnonzero(unit_side < 0)
    del unit_side
    local = np.where(split < 0, np.searchsorted(new_units, unit), -1).astype(units.ID)
    del unit
    rows = np.flatnonzero(local >= 0).astype(units.ID)
    classes = units.Pairs(local, cls, len(class_names), rows)
    label = classes.mode()[1]  # every new unit has rows: one label per unit, in order
    # Each new unit's first row, as a row of the URI column (`kept`'s own, or `uri_rows`').
    spread = local if at is None else _spread(local, at, len(uris))
    first = order.first_rows(spread, new_units.size, uris, root)
    del spread
    sides_new = order.balance(
        order.stable_order(uris, first, root),
        label,
        classes,
        counts,
        [(names.index(name), share) for name, share in targets.items()],
    )
    split[rows] = sides_new[local[rows]]
    stats = {
        "units": n_units,
        "new_units": int(new_units.size),
        "split_conflicts": int((sides > 1).sum()),
    }
    return names, split, stats


def _uris(
    kept: pa.Table,
    links: Iterable[tuple[str, str]],
    uri_rows: tuple[pa.ChunkedArray, np.ndarray] | None,
) -> tuple[pa.ChunkedArray, np.ndarray | None]:
    """The URI column and, if it is not `kept`'s own, each kept row's row in it (links,
    which name rows by URI, take the kept rows' own column)."""
    if uri_rows is None:
        return units.strings(kept["source_uri"]), None
    column, at = uri_rows
    if links:
        return units.strings(take(column, at)), None
    return units.strings(column), np.asarray(at, np.int64)


def _spread(local: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    """Per row of the URI column, the new unit of the kept row there (-1: none)."""
    out = np.full(n, -1, local.dtype)
    out[at] = local
    return out


def _assigned(column: pa.ChunkedArray, names: list[str]) -> tuple[list[str], np.ndarray]:
    """Each row's index into the split names, -1 where none is assigned yet (null or
    empty); names already assigned that no target has are added after the targets'."""
    ids, distinct = units.codes(column)
    lookup = []
    for name in distinct.to_pylist():  # a handful of names
        if name and name not in names:
            names.append(name)
        lookup.append(names.index(name) if name else -1)
    return names, np.asarray(lookup + [-1], units.ID)[ids]  # null rows (-1): the last, -1


def _counts(cls: np.ndarray, split: np.ndarray, n_classes: int, n_names: int) -> np.ndarray:
    """Rows per class and split name among the assigned rows."""
    held = split >= 0
    flat = np.bincount(cls[held] * n_names + split[held], minlength=n_classes * n_names)
    return flat.reshape(n_classes, n_names)
