"""Off-class photos: real photographs whose content does not belong to their folder's class.

A web search for "quadcopter" also returns aerial views taken by one, a search for
"airliner" cockpits, cabins and toys, and any folder can hold a portrait or a cat. They
are photos, so the junk filter rightly keeps them, yet they teach the classifier the
wrong thing. What they show, the MobileNetV2 embedding every kept image already
carries (`pipeline.embed`), says they sit apart from their class.

An out-of-fold linear probe, as cleanlab does: a linear discriminant analysis (shared
within-class covariance, shrunk; `off_class_shrinkage`) over the embeddings of the images
that may be kept (the previous version's kept images, from its index, plus this run's
candidates), fitted `off_class_folds` times, each time without the fold (fixed by a hash
of the URI) the scored images sit in, so no image vouches for itself. It gives each image
P(folder's class). How low that is only means something against the class's own images:
on a lake of clear photos nearly every member is near-certain, while on small crops
against the sky (halmstad) many real birds are not, because a distant bird and a distant
drone look alike. So

    off_class_score = (median logit P(own) over the class - logit P(own)) / spread,

spread being the class's scaled median absolute deviation of that logit (both taken on
a fixed sample of the class, `off_class_sample`, scored the same way), and 0 unless the
probe gives the image's own class at most `off_class_max_own`. An image of another class
scores high (a bird among drones); so, often, does one of no class at all (a cat among
drones), which the probe must still place in one of the lake's classes. `off_class_like`
names the other class the probe prefers.

Separately, `off_class_neighbour_share` is the share of the image's `off_class_k` most
similar images (cosine; itself and near copies left out) that carry one other class:
report.json lists images where most do as possible label issues. Past
`off_class_neighbour_sample` images, they are searched among that many, a sample fixed
by content hash, so that the search grows with the lake, not with its square. In a
first run the images searched are the images scored, so a pair's similarity serves
both (`neighbours`: about half the products); a tie at the k-th place goes to the
image first in URI order.

Distributed and deterministic: each fold's probe is one Ray task (training rows capped
per class, chosen by URI hash), the neighbour search runs over blocks of query rows in
Ray tasks, and nothing loops over images on the driver. The references are built once
by a task that reads their embeddings from the candidate shards (`pipeline.vectors`) and
left in the object store; the driver keeps their labels and keys, and hands the tasks
row numbers, never vectors. An incremental run scores its new images against everything
that will be kept.

One module per concern: `config` (settings, column names), `probe` (the maths in numpy),
`score` (the maths on Ray tasks, `score_rows`), `fit` (the probe's statistics added up
and solved off the driver), `neighbours` (a first run's search, half the products) and
`stage` (the stage on tables, its merge into the decisions and its report.json summary).
"""

from pipeline.offclass.config import (
    COLUMNS,
    LIKE,
    LIKE_PROBABILITY,
    MAX_LABEL_ISSUES,
    NEIGHBOUR_CLASS,
    NEIGHBOUR_SHARE,
    POLICIES,
    REJECT,
    SCORE,
    OffClassConfig,
)
from pipeline.offclass.probe import (
    FoldStats,
    References,
    capped,
    discriminants,
    fold_stats,
    logit,
    neighbour_votes,
    posterior,
    typical_confidence,
    uri_rank,
)
from pipeline.offclass.score import (
    OffClassScores,
    Stored,
    distributed_votes,
    out_of_fold,
    score_rows,
    score_stored,
)
from pipeline.offclass.stage import (
    decisions_with_off_class,
    detail,
    embeddings,
    off_class_stage,
    summary,
)

__all__ = [
    "COLUMNS",
    "LIKE",
    "LIKE_PROBABILITY",
    "MAX_LABEL_ISSUES",
    "NEIGHBOUR_CLASS",
    "NEIGHBOUR_SHARE",
    "POLICIES",
    "REJECT",
    "SCORE",
    "FoldStats",
    "OffClassConfig",
    "OffClassScores",
    "References",
    "Stored",
    "capped",
    "decisions_with_off_class",
    "detail",
    "discriminants",
    "distributed_votes",
    "embeddings",
    "fold_stats",
    "logit",
    "neighbour_votes",
    "off_class_stage",
    "out_of_fold",
    "posterior",
    "score_rows",
    "score_stored",
    "summary",
    "typical_confidence",
    "uri_rank",
]
