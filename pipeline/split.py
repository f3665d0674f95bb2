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
import hashlib
import io
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from common.config import option
from common.dataset import TEST, TRAIN, VAL
from common.storage import StorageConfig, filesystem, relative_to


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
        if min(shares.values()) < 0 or self.train_fraction <= 0:
            raise ValueError(f"split fractions must be in [0, 1] and sum to <= 1: {shares}")
        return {name: share for name, share in shares.items() if share > 0}


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _stable_order(key: str) -> str:
    """A deterministic pseudo-random order, independent of input order and run."""
    return hashlib.sha256(key.encode()).hexdigest()


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
    """Split of every row of `kept` (columns source_uri, class_name, cluster_id, group,
    split: null for rows not assigned yet). Returns the splits and a few counts.

    New units are ordered by their paths relative to `root` (the lake's URI), so the
    same lake copied to another bucket or folder gets the same split."""
    uris = kept["source_uri"].to_pylist()
    classes = kept["class_name"].to_pylist()
    existing = kept["split"].to_pylist()
    index = {uri: i for i, uri in enumerate(uris)}
    units = _UnionFind(len(uris))
    first_with: dict[str, int] = {}
    for column in ("cluster_id", "group"):
        for i, key in enumerate(kept[column].to_pylist()):
            if key is not None:
                units.union(i, first_with.setdefault(f"{column}:{key}", i))
    for a, b in links:
        if a in index and b in index:
            units.union(index[a], index[b])

    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(uris)):
        members[units.find(i)].append(i)

    splits: list[str | None] = list(existing)
    counts: dict[str, Counter] = defaultdict(Counter)
    for i, split in enumerate(existing):
        if split:
            counts[classes[i]][split] += 1
    conflicts = 0
    new_units = []
    for rows in members.values():
        assigned = Counter(existing[i] for i in rows if existing[i])
        if assigned:
            if len(assigned) > 1:
                conflicts += 1  # new rows bridged two old units: keep both, join the larger
            side = assigned.most_common(1)[0][0]
            for i in rows:
                if not splits[i]:
                    splits[i] = side
                    counts[classes[i]][side] += 1
        else:
            new_units.append(rows)

    targets = cfg.targets()
    new_units.sort(key=lambda rows: _stable_order(min(relative_to(uris[i], root) for i in rows)))
    for rows in new_units:
        label = Counter(classes[i] for i in rows).most_common(1)[0][0]
        side = _most_behind(counts[label], targets, len(rows))
        for i in rows:
            splits[i] = side
            counts[classes[i]][side] += 1
    stats = {"units": len(members), "new_units": len(new_units), "split_conflicts": conflicts}
    return [s or TRAIN for s in splits], stats


def _most_behind(current: Counter, targets: dict[str, float], adding: int) -> str:
    """The split whose count is furthest below its target share after adding `adding`."""
    total = sum(current.values()) + adding
    return max(targets, key=lambda s: (targets[s] * total - current[s], targets[s]))
