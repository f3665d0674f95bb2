"""A lake with planted duplicates, label conflicts, blanks and junk, with the outcome
the cleaning job must give each file (for the tests and the duplicate benchmark)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from devkit.messy_lake import KEPT, REJECTED, Case, encode, photo
from devkit.sample_lake import COMMITTED_CROPS


def _crop(image: Image.Image, share: float) -> Image.Image:
    dx, dy = int(image.width * share), int(image.height * share)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def logo() -> Image.Image:
    image = Image.new("RGB", (300, 300), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 260, 260), fill=(200, 30, 40))
    draw.rectangle((110, 90, 190, 210), fill="white")
    return image


def banner() -> Image.Image:
    image = photo(900, 110, 55)
    ImageDraw.Draw(image).rectangle((20, 20, 300, 90), fill=(250, 200, 0))
    return image


def text_page() -> Image.Image:
    image = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(image)
    for row in range(14):
        draw.text(
            (12, 10 + row * 20), "Buy drones online - best prices - free shipping", fill="black"
        )
    return image


def search_icon() -> Image.Image:
    image = Image.new("RGB", (128, 128), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 80, 80), outline=(60, 60, 60), width=10)
    draw.line((72, 72, 110, 110), fill=(60, 60, 60), width=14)
    return image


def planted_cases() -> list[Case]:
    original = photo(400, 300, 105)
    conflict = photo(320, 240, 107)
    kept = "birds/original.png"
    cases = [
        Case(kept, encode(original, "PNG"), KEPT, source_format="PNG"),
        Case(
            "birds/original_q60.jpg",
            encode(original, "JPEG", quality=60),
            REJECTED,
            reason="near_duplicate",
        ),
        Case(
            "birds/original_small.jpg",
            encode(original.resize((200, 150)), "JPEG"),
            REJECTED,
            reason="near_duplicate",
        ),
        Case(
            "birds/original.webp",
            encode(original, "WEBP", quality=80),
            REJECTED,
            reason="near_duplicate",
        ),
        Case(
            "birds/original_cropped.jpg",
            encode(_crop(original, 0.02), "JPEG"),
            REJECTED,
            reason="near_duplicate",
        ),
        Case(
            "birds/original_copy.bmp", encode(original, "BMP"), REJECTED, reason="exact_duplicate"
        ),
        Case("drones/conflict.png", encode(conflict, "PNG"), REJECTED, reason="label_conflict"),
        Case("birds/conflict_copy.png", encode(conflict, "PNG"), REJECTED, reason="label_conflict"),
        Case(
            "birds/sky.png",
            encode(Image.new("RGB", (300, 200), (135, 180, 235)), "PNG"),
            REJECTED,
            reason="junk",
        ),
        Case(
            "drones/white.jpg",
            encode(Image.new("RGB", (256, 256), "white"), "JPEG"),
            REJECTED,
            reason="junk",
        ),
        Case("birds/logo.png", encode(logo(), "PNG"), REJECTED, reason="junk"),
        Case("drones/banner.jpg", encode(banner(), "JPEG"), REJECTED, reason="junk"),
        Case("drones/ad_text.png", encode(text_page(), "PNG"), REJECTED, reason="junk"),
        Case("birds/search_icon.png", encode(search_icon(), "PNG"), REJECTED, reason="junk"),
    ]
    cases += [
        Case(
            f"birds/photo_{i}.jpg",
            encode(photo(320, 240, 200 + i), "JPEG"),
            KEPT,
            source_format="JPEG",
        )
        for i in range(6)
    ]
    return cases + real_crops()


def real_crops(per_class: int = 4) -> list[Case]:
    """Real CC0 photos (small objects against the sky) that every check must let through."""
    cases = []
    for folder, name in (("Flying_Birds", "birds"), ("Large_QuadCopters", "drones")):
        for path in sorted((COMMITTED_CROPS / folder).glob("*.jpg"))[:per_class]:
            cases.append(Case(f"{name}/{path.name}", path.read_bytes(), KEPT, source_format="JPEG"))
    return cases


DUPLICATE_OF = {
    "birds/original_q60.jpg": "birds/original.png",
    "birds/original_small.jpg": "birds/original.png",
    "birds/original.webp": "birds/original.png",
    "birds/original_cropped.jpg": "birds/original.png",
    "birds/original_copy.bmp": "birds/original.png",
}
