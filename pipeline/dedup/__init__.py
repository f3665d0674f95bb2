"""Whole-lake duplicate removal: exact and near-duplicate clusters, one keeper each.

Why: a scraped lake holds the same photo many times (re-encodes, resizes, light crops).
Copies inflate training, leak across the train/test split, and sometimes carry two
different labels. This stage decides, for every normalised image, whether it is kept,
and gives every image a `cluster_id` so the split can keep a cluster on one side.

How, top-down (`deduplicate`, in `decide`, runs these steps; one module each):

- `config`: the settings (`DedupConfig`) and the reasons a copy is dropped.
- `signals`: per image, in the normalise stage: the perceptual hash and its stability.
- `rows`: the caller's tables as arrays. Rows with the same `sha256` (identical
  normalised pixels) form one unit, so exact duplicates always end up in one cluster.
  Rows flagged `low_detail`, and rows whose hash is degenerate (`degenerate_hashes`),
  take part in exact matching only: a blank image's pHash has at most one bit set and
  would otherwise be "near" every plain image.
- `search`: candidate pairs, distributed on Ray (`find_near_pairs`, multi-index hashing).
- `candidates`: with verification, the looser `verify_hash_distance` plus SimHashes of
  the embeddings and grey layouts as further candidate sources.
- `verify`: a keeper claims a candidate only if their MobileNetV2 embeddings and colour
  layouts (`pipeline.embed`) agree too: the looser radius catches slight crops, the
  second signal rejects unrelated images whose hashes collide.
- `cluster`: keepers picked greedily in keep-policy order; a copy goes to a keeper it is
  within the threshold *of* (chains never merge), the closest one (`assign_to`).
- `components`, `parts`: the rows cut into whole connected components (units, hash
  nodes, near pairs), found in Ray tasks, so clustering runs per part in a task.
- `keep`: per part, in its task: reasons and counts. A cluster whose copies carry two
  classes is reported and, by default, dropped entirely (label conflicts).
- `decide`: runs the steps and merges the parts' decisions and counts.

Incremental runs pass `existing` (rows kept by earlier runs, same columns, optionally
`cluster_id`): those rows stay kept, and only the new rows get decisions.
"""

from pipeline.dedup.candidates import grey_simhashes, simhashes
from pipeline.dedup.config import (
    ASSIGN_CLOSEST,
    ASSIGN_FIRST,
    ASSIGN_MODES,
    EXACT_DUPLICATE,
    HASH_BITS,
    HASH_KINDS,
    KEEP_KEYS,
    LABEL_CONFLICT,
    NEAR_DUPLICATE,
    DedupConfig,
)
from pipeline.dedup.decide import DECISION_SCHEMA, Decided, DedupResult, deduplicate
from pipeline.dedup.rows import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    degenerate_hashes,
    hashes_to_uint64,
    policy_rank,
    vectors,
)
from pipeline.dedup.search import PROBE_COST, BandPlan, NearPairs, find_near_pairs, plan_bands
from pipeline.dedup.signals import compute_hashes, hash_signals, hash_stability
from pipeline.dedup.verify import explain_pair

__all__ = [
    "ASSIGN_CLOSEST",
    "ASSIGN_FIRST",
    "ASSIGN_MODES",
    "DECISION_SCHEMA",
    "EXACT_DUPLICATE",
    "HASH_BITS",
    "HASH_KINDS",
    "KEEP_KEYS",
    "LABEL_CONFLICT",
    "NEAR_DUPLICATE",
    "OPTIONAL_COLUMNS",
    "PROBE_COST",
    "REQUIRED_COLUMNS",
    "BandPlan",
    "Decided",
    "DedupConfig",
    "DedupResult",
    "NearPairs",
    "compute_hashes",
    "deduplicate",
    "degenerate_hashes",
    "explain_pair",
    "find_near_pairs",
    "grey_simhashes",
    "hash_signals",
    "hash_stability",
    "hashes_to_uint64",
    "plan_bands",
    "policy_rank",
    "simhashes",
    "vectors",
]
