"""Settings of the cleaning job: one typed config, a TOML file and flags mapped onto it."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import option, section
from common.storage import StorageConfig
from pipeline.dedup import DedupConfig
from pipeline.junk import JunkConfig
from pipeline.split import SplitConfig


@dataclass
class NormalizeConfig:
    max_side: int = option(
        512, "Shrink so the longest side is at most this many pixels (never upscale)"
    )
    min_side: int = option(32, "Reject images whose shorter side is below this (too_small)")
    jpeg_quality: int = option(90, "JPEG quality of the normalised images")
    max_pixels: int = option(
        89_478_485,
        "Decompression-bomb limit: reject images with more pixels than this (Pillow's default)",
    )
    max_file_bytes: int = option(
        100 * 2**20, "Reject source files larger than this without reading them (file_too_large)"
    )
    rasterize_svg: bool = option(
        True,
        "Rasterise SVG files (sandboxed: no network or file "
        "access); --no-rasterize-svg rejects them",
    )
    max_svg_bytes: int = option(5_000_000, "Largest SVG document to parse")
    thumbnail_side: int = option(96, "Side of the preview stored with each row for review")
    background: tuple[int, int, int] = option(
        (255, 255, 255), "RGB background that transparency is flattened onto, e.g. 255,255,255"
    )


@dataclass
class ExecutionConfig:
    files_per_task: int = option(128, "Source files per Ray task (and per output shard)")
    read_window_files: int = option(16, "Files fetched concurrently within one task")
    read_window_bytes: int = option(
        64 * 2**20, "Most source bytes held in memory by one task's read window"
    )
    ray_address: str | None = option(
        None,
        "Ray cluster to join ('auto' inside a cluster); "
        "default: the RAY_ADDRESS variable, else a local Ray",
    )
    num_cpus: int | None = option(None, "CPUs for a local Ray started by this job")
    progress: bool = option(True, "Show progress bars")


@dataclass
class ReportConfig:
    gallery_per_reason: int = option(48, "Thumbnails shown per rejection reason in report.html")


@dataclass
class CleanConfig:
    input_uri: str = option("", "The lake: any fsspec URI with one sub-prefix per class")
    output_uri: str = option("", "Where the cleaned data set is published")
    storage: StorageConfig = section(StorageConfig)
    normalize: NormalizeConfig = section(NormalizeConfig)
    junk: JunkConfig = section(JunkConfig)
    dedup: DedupConfig = section(DedupConfig)
    split: SplitConfig = section(SplitConfig)
    report: ReportConfig = section(ReportConfig)
    execution: ExecutionConfig = section(ExecutionConfig)
