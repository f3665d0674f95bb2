"""De-duplication settings and the names its decisions use (reasons, keep keys)."""

from __future__ import annotations

from dataclasses import dataclass

from common.backbone import NO_WEIGHTS
from common.config import option

# Reasons a duplicate is dropped (the values of the output's `reason` column).
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
LABEL_CONFLICT = "label_conflict"

HASH_KINDS = ("phash", "dhash", "whash", "ahash")
KEEP_KEYS = ("resolution", "lossless", "earliest")
ASSIGN_CLOSEST, ASSIGN_FIRST = "closest", "first"
ASSIGN_MODES = (ASSIGN_CLOSEST, ASSIGN_FIRST)
HASH_BITS = 64


@dataclass
class DedupConfig:
    hash_kind: str = option(
        "phash",
        "Perceptual hash (64-bit, imagehash) compared for near duplicates; the `phash` "
        "column holds this kind",
        choices=HASH_KINDS,
    )
    max_hash_distance: int = option(
        8,
        "Without embedding verification (--embedding-weights none): a near duplicate's "
        "hash differs in at most this many of 64 bits from the image kept in its place",
        min=0,
        max=64,
    )
    embedding_weights: str = option(
        "default",
        "MobileNetV2 weights that embed each image to verify near-duplicate candidates: "
        "'default' = torchvision's IMAGENET1K_V2 (downloaded once into the torch cache; "
        "the job stops with an error when it cannot be), a local state-dict path (a "
        "backbone-only `features.*` dict is fine), or 'none' = no verification (pHash "
        "alone, within max_hash_distance)",
    )
    embedding_side: int = option(
        112, "Side of the square the image is squashed to before it is embedded", min=32, unit="px"
    )
    verify_hash_distance: int = option(
        12,
        "With verification: hashes within this many bits are candidates, and a candidate "
        "is a near duplicate only if it also passes the checks below against the image "
        "kept in its place",
        min=0,
        max=64,
    )
    embedding_hash_distance: int = option(
        8,
        "With verification, a second candidate source: images whose embeddings' 64-bit "
        "SimHashes (sides of fixed random hyperplanes through the lake's mean embedding) "
        "differ in at most this many bits are candidates too, verified the same way. It "
        "reaches copies whose pHash moved beyond verify_hash_distance (strong JPEG or WEBP "
        "on small images); 0 turns it off",
        min=0,
        max=64,
    )
    grey_hash_distance: int = option(
        0,
        "With verification, a third candidate source: images whose grey layouts' 64-bit "
        "SimHashes (each layout centred on its own mean, so the angle between two is their "
        "correlation) differ in at most this many bits are candidates too, verified the "
        "same way. It reaches re-encoded copies whose pHash and embedding both moved; 0 "
        "turns it off",
        min=0,
        max=64,
    )
    min_embedding_similarity: float = option(
        0.9,
        "Verification: cosine similarity of the two images' embeddings at least this",
        min=-1,
        max=1,
    )
    max_colour_angle: float = option(
        3.0,
        "Verification: angle in degrees between the two images' colour layouts (mean RGB "
        "of a 4x4 grid; a brightness change does not move it) at most this",
        min=0,
        max=180,
        unit="°",
    )
    assign_to: str = option(
        "closest",
        "Which kept image a near copy is dropped in favour of, when several verify it: "
        "'closest' = the one whose colour layout is closest (with verification; else the "
        "nearest hash), among those kept before it (the keep policy's order); 'first' = the "
        "first kept one to reach it (keep-policy order). On small crops against plain sky, "
        "'first' lets a larger crop of another clip take a copy before its own original",
        choices=ASSIGN_MODES,
    )
    keep_policy: list[str] = option(
        ["resolution", "lossless", "earliest"],
        "Which copy of a cluster is kept, by these keys in order: resolution (more pixels), "
        "lossless (lossless source format), earliest (lower seen_order); source_uri breaks ties",
        choices=KEEP_KEYS,
    )
    lossless_formats: list[str] = option(
        ["PNG", "BMP", "TIFF", "PPM", "PGM", "PBM", "GIF", "TGA", "QOI", "ICO", "SVG"],
        "Source formats the keep policy counts as lossless (WEBP is not: its lossless mode "
        "cannot be told from the format name)",
    )
    min_hash_stability: float = option(
        500.0,
        "Low-structure images (a small object against plain sky, soft gradients) have pHash "
        "bits that sit near the median that sets them, so unrelated pictures collide: an "
        "image whose hash_stability is below this is matched only within "
        "strict_hash_distance",
        min=0,
    )
    strict_hash_distance: int = option(
        2,
        "Without verification: the stricter near-duplicate distance for images of low "
        "hash stability",
        min=0,
        max=64,
    )
    min_grey_correlation: float = option(
        0.7,
        "Verification: correlation of the two images' grey layouts (24x24 grey "
        "thumbnails; the best over shifts of one cell) at least this, whatever the other "
        "signals say: frames of one clip seconds apart embed alike and share their sky, "
        "but the object has moved (0 turns the floor off)",
        min=-1,
        max=1,
    )
    grey_match_correlation: float = option(
        0.95,
        "Verification: a candidate whose grey layout correlates at least this much is a "
        "near duplicate if its colour layout is within max_colour_angle, whatever its "
        "embedding and strict_colour_angle say: strong JPEG or WEBP on a small crop moves "
        "the embedding but not the pixels (above 1 turns this off)",
        min=-1,
    )
    strict_colour_angle: float = option(
        0.5,
        "With verification: the stricter colour-layout angle (degrees) for images of low "
        "hash stability: on plain sky the colours are most of what tells two clips apart",
        min=0,
        max=180,
        unit="°",
    )
    conflict_matching: str = option(
        "exact",
        "Copies in two classes form a label conflict when they are exact (identical pixels) "
        "or also when near (within max_hash_distance). 'exact' by default: on low-structure "
        "images (objects against plain sky) unrelated pictures share pHashes, and a near "
        "conflict would drop both",
        choices=("exact", "near"),
    )
    drop_label_conflicts: bool = option(
        True,
        "A cluster whose copies carry different classes drops every copy (label_conflict); "
        "--no-drop-label-conflicts keeps its keeper and drops the rest",
    )
    min_hash_bits: int = option(
        4,
        "A hash with fewer than this many 1 bits, or 0 bits, is degenerate (a blank "
        "image's pHash is 8000000000000000) and is matched exactly only",
        min=0,
        max=64,
    )
    max_hash_collisions: int = option(
        10_000,
        "A hash value shared by more distinct images (sha256) than this is degenerate and "
        "matched exactly only (0: no limit)",
        min=0,
    )
    hash_bands: int = option(
        0,
        "Bands the 64 hash bits are cut into for the search; 0 picks the cheapest for the lake",
        min=0,
        max=64,
    )
    max_bucket_hashes: int = option(
        4096,
        "A band value shared by more distinct hashes than this is searched on its own, "
        "blockwise, so one degenerate bucket cannot exhaust a task's memory",
        min=1,
    )
    hashes_per_task: int = option(
        131_072, "Distinct hashes whose near neighbours one Ray search task looks up", min=1
    )

    @property
    def verified(self) -> bool:
        """Candidates are verified with the embedding and colour layout."""
        return self.embedding_weights != NO_WEIGHTS

    @property
    def search_distance(self) -> int:
        """The Hamming radius the candidate search uses."""
        return self.verify_hash_distance if self.verified else self.max_hash_distance
