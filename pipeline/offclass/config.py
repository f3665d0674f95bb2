"""The off-class stage's settings and the names of the columns it writes."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import option

SCORE = "off_class_score"
LIKE = "off_class_like"  # the other class the probe finds likeliest
LIKE_PROBABILITY = "off_class_like_probability"
NEIGHBOUR_SHARE = "off_class_neighbour_share"  # share of the k nearest in one other class
COLUMNS = (SCORE, LIKE, LIKE_PROBABILITY, NEIGHBOUR_SHARE)
REJECT = "off_class_reject"  # stage output only: the policy's verdict per candidate
NEIGHBOUR_CLASS = "off_class_neighbour_class"  # stage output only: for report.json
POLICIES = ("reject", "report")
MAX_LABEL_ISSUES = 100


@dataclass
class OffClassConfig:
    off_class_policy: str = option(
        "reject",
        "Off-class photos (content of another class or none): 'reject' drops those "
        "scoring at least max_off_class with reason off_class; 'report' only scores them",
        choices=POLICIES,
    )
    max_off_class: float = option(
        8.0,
        "off_class: flag a kept image whose off_class_score (how many class spreads its "
        "out-of-fold probe confidence sits below its class's typical one) reaches this",
        min=0,
    )
    off_class_max_own: float = option(
        0.4,
        "off_class: an image is scored only when the probe gives its own class at most "
        "this probability (otherwise its score is 0)",
        above=0,
        max=1,
    )
    off_class_shrinkage: float = option(
        0.3,
        "off_class: how far the probe's within-class covariance is shrunk towards a "
        "multiple of the identity (more: steadier on small or confusable classes)",
        above=0,
        max=1,
    )
    off_class_folds: int = option(5, "off_class: folds of the out-of-fold probe", min=2)
    off_class_repeats: int = option(
        5,
        "off_class: fold splits the probe is fitted on, its probabilities averaged (one "
        "split decides borderline images by where their look-alikes fell)",
        min=1,
    )
    off_class_sample: int = option(
        300,
        "off_class: images per class (fixed by URI hash) that set its typical confidence",
        min=1,
    )
    off_class_min_class: int = option(
        20,
        "off_class: images of a class with fewer kept images are not scored (nothing to "
        "compare with); nor is anything while fewer than two classes have that many",
        min=1,
    )
    off_class_k: int = option(
        10, "off_class: nearest neighbours behind the label-issue list", min=1
    )
    off_class_neighbour_sample: int = option(
        20_000,
        "off_class: each image's nearest neighbours are searched among at most this many "
        "images, kept and new (a sample fixed by content hash; all of them up to this "
        "many): the search costs images x this, not images squared",
        min=1,
    )
    off_class_copy_similarity: float = option(
        0.95, "off_class: neighbours at least this similar are near copies, left out", min=0, max=1
    )
    label_issue_share: float = option(
        0.7,
        "report.json lists a kept image as a possible label issue when at least this "
        "share of its off_class_k nearest neighbours carry one other class",
        above=0,
        max=1,
    )
    off_class_block_rows: int = option(
        1024, "off_class: images per Ray task of the probe and the neighbour search", min=1
    )
