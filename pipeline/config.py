"""Settings of the cleaning job: one typed config, a TOML file and flags mapped onto it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.config import ConfigError, option, section
from common.storage import StorageConfig
from pipeline.dedup import DedupConfig
from pipeline.junk import JunkConfig
from pipeline.offclass import OffClassConfig
from pipeline.split import SplitConfig

# Where the embedding runs (execution.embedding_device): in the normalise tasks, or in
# a stage of its own, an actor pool on GPUs or on CPUs (`pipeline.embed_stage`).
EMBED_IN_TASKS, EMBED_ON_GPU, EMBED_ON_CPU_ACTORS = "cpu", "gpu", "cpu-actors"
EMBEDDING_DEVICES = (EMBED_IN_TASKS, EMBED_ON_GPU, EMBED_ON_CPU_ACTORS)


@dataclass
class NormalizeConfig:
    max_side: int = option(
        512,
        "Shrink so the longest side is at most this many pixels (never upscale)",
        min=16,
        unit="px",
    )
    min_side: int = option(
        32, "Reject images whose shorter side is below this (too_small)", min=1, unit="px"
    )
    jpeg_quality: int = option(90, "JPEG quality of the normalised images", min=1, max=95)
    max_pixels: int = option(
        89_478_485,
        "Decompression-bomb limit: reject images with more pixels than this (Pillow's default)",
        min=1,
        unit="pixels",
    )
    max_file_bytes: int = option(
        100 * 2**20,
        "Reject source files larger than this without reading them (file_too_large)",
        min=1,
        unit="bytes",
    )
    rasterize_svg: bool = option(
        True,
        "Rasterise SVG files (sandboxed: no network or file "
        "access); --no-rasterize-svg rejects them",
    )
    max_svg_bytes: int = option(5_000_000, "Largest SVG document to parse", min=1, unit="bytes")
    thumbnail_side: int = option(
        96, "Side of the preview stored with each row for review", min=8, unit="px"
    )
    background: tuple[int, int, int] = option(
        (255, 255, 255),
        "RGB background that transparency is flattened onto, e.g. 255,255,255",
        min=0,
        max=255,
    )


@dataclass
class ExecutionConfig:
    files_per_task: int = option(128, "Source files per Ray task (and per output shard)", min=1)
    read_window_files: int = option(16, "Files fetched concurrently within one task", min=1)
    read_window_bytes: int = option(
        64 * 2**20,
        "Most source bytes held in memory by one task's read window",
        min=1,
        unit="bytes",
    )
    ray_address: str | None = option(
        None,
        "Ray cluster to join ('auto' inside a cluster); "
        "default: the RAY_ADDRESS variable, else a local Ray",
    )
    num_cpus: int | None = option(None, "CPUs for a local Ray started by this job", min=1)
    progress: bool = option(
        True, "Ray Data's progress bars on a terminal (elsewhere one line per stage)"
    )
    wait_for_lock: bool = option(
        False,
        "When another run is writing OUTPUT_URI (it holds _lease.json), wait for it to "
        "finish instead of stopping with exit 2",
    )
    embedding_device: str = option(
        EMBED_IN_TASKS,
        "Where the embedding network runs: 'cpu' = inside each normalise task; 'gpu' = a "
        "stage of its own, a pool of up to embedding_actors actors with "
        "embedding_gpus_per_actor GPUs each (GPU nodes: docs/cleaning.md); 'cpu-actors' = "
        "that stage on CPUs (torch in those actors only, not in every normalise worker). "
        "No effect with --embedding-weights none",
        choices=EMBEDDING_DEVICES,
    )
    embedding_actors: int = option(
        1,
        "Most actors the embedding stage grows to ('gpu' or 'cpu-actors'): one per GPU "
        "the run may use",
        min=1,
    )
    embedding_gpus_per_actor: float = option(
        1.0,
        "GPUs each embedding actor reserves ('gpu'); a fraction such as 0.5 puts two "
        "actors on one GPU",
        above=0,
    )

    def validate(self) -> None:
        """Ray takes a fraction of a GPU, or whole GPUs: never 1.5."""
        gpus = self.embedding_gpus_per_actor
        if gpus > 1 and not float(gpus).is_integer():
            raise ConfigError(
                "execution.embedding_gpus_per_actor",
                f"must be at most 1 or a whole number, got {gpus:g}",
            )


@dataclass
class ReportConfig:
    gallery_per_reason: int = option(
        48, "Thumbnails shown per rejection reason in report.html", min=0
    )
    preview_side: int = option(
        256,
        "Side of the enlarged previews of the cards report.html shows (0: thumbnails only)",
        min=0,
        unit="px",
    )


@dataclass
class CleanConfig:
    input_uri: str = option("", "The lake: any fsspec URI with one sub-prefix per class")
    output_uri: str = option("", "Where the cleaned data set is published")
    overrides: str | None = option(
        None,
        "CSV/JSON of a person's decisions (source_uri, decision keep|drop|auto, note), "
        "honoured before any rule and kept by later runs; report.html downloads one",
    )
    inventory_uri: str | None = option(
        None,
        "An S3 Inventory report of the lake's bucket (its manifest.json, or the folder whose "
        "newest manifest.json counts), read as the run's snapshot instead of listing the "
        "lake: CSV, ORC or Parquet with the Size field (docs/cluster.md)",
    )
    storage: StorageConfig = section(StorageConfig)
    normalize: NormalizeConfig = section(NormalizeConfig)
    junk: JunkConfig = section(JunkConfig)
    off_class: OffClassConfig = section(OffClassConfig)
    dedup: DedupConfig = section(DedupConfig)
    split: SplitConfig = section(SplitConfig)
    report: ReportConfig = section(ReportConfig)
    execution: ExecutionConfig = section(ExecutionConfig)

    def validate(self) -> None:
        """Rules between settings, checked before any listing or Ray start (each field's
        own type and range are checked from its option() declaration)."""
        split = self.split
        if split.train_fraction + split.val_fraction > 1:
            raise ConfigError(
                "split.val_fraction",
                f"train_fraction + val_fraction must be at most 1, got "
                f"{split.train_fraction:g} + {split.val_fraction:g}",
            )
        if self.normalize.min_side > self.normalize.max_side:
            raise ConfigError(
                "normalize.min_side",
                f"must not exceed max_side ({self.normalize.max_side}), "
                f"got {self.normalize.min_side}",
            )
        if self.junk.min_brightness >= self.junk.max_brightness:
            raise ConfigError(
                "junk.min_brightness",
                f"must be below max_brightness ({self.junk.max_brightness:g}), "
                f"got {self.junk.min_brightness:g}",
            )
        if split.group_regex is not None:
            try:
                re.compile(split.group_regex)
            except re.error as exc:
                raise ConfigError("split.group_regex", f"not a valid regex: {exc}") from None
