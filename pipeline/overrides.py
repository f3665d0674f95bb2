"""Decisions a person made by hand: keep or drop a file, whatever the automatic rules say.

`--overrides URI` names a small CSV or JSON file with one row per file:

    source_uri,decision,note
    s3://lake/raw/Birds/0042.jpg,keep,a real bird on a plain sky
    Drones/banner-7.png,drop,an ad

`decision` is `keep`, `drop`, or `auto` (forget an override given in an earlier run);
`note` is optional; a `source_uri` without a scheme or leading `/` is relative to the
lake. The review page (report.html) downloads such a file for the cards a person selects.

Overrides are sticky: each version records the overrides it honoured in its manifest,
and the next run starts from them, applying the new file on top. A file whose override
changed since the previous version is processed again (with the files that were dropped
as duplicates of one that is now dropped), so the new version decides it afresh.

Where they are honoured: the work rows carry `override` / `override_note` columns
(`with_overrides`); normalisation rejects a `drop` with reason `override` and skips the
junk checks for a `keep`; the off-class stage never rejects a `keep`; de-duplication
never drops a `keep` (it stays kept, in its cluster). A file that cannot be decoded at
all is still rejected: there is nothing to keep.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common.storage import StorageConfig, filesystem, join

OVERRIDE = "override"  # column: "keep", "drop" or null
OVERRIDE_NOTE = "override_note"  # column: the person's note, or null
KEEP, DROP, AUTO = "keep", "drop", "auto"
DECISIONS = (KEEP, DROP, AUTO)
MAX_BYTES = 20 * 2**20  # a hand-made decision list; anything larger is a mistake

SCHEMA = pa.schema([("source_uri", pa.string()), ("decision", pa.string()), ("note", pa.string())])


class OverridesError(ValueError):
    """The overrides file cannot be used: the job stops, before any work, with one line."""


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_bytes(uri: str, storage: StorageConfig) -> bytes:
    try:
        fs, path = filesystem(uri, storage)
        size = fs.size(path)
        if size is not None and size > MAX_BYTES:
            raise OverridesError(f"overrides {uri}: {size} bytes, more than {MAX_BYTES}")
        return fs.cat_file(path)
    except OverridesError:
        raise
    except Exception as exc:  # noqa: BLE001 - any read failure stops the job before work
        raise OverridesError(
            f"cannot read overrides {uri}: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def _records_csv(text: str, uri: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in ("source_uri", "decision") if c not in header]
    if missing:
        raise OverridesError(
            f"overrides {uri}: CSV header lacks column(s) {', '.join(missing)} "
            f"(expected source_uri,decision[,note])"
        )
    reader.fieldnames = header
    return [(reader.line_num, row) for row in reader]


def _records_json(text: str, uri: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OverridesError(f"overrides {uri}: not valid JSON: {_one_line(exc)}") from exc
    if isinstance(data, dict) and "overrides" in data:
        data = data["overrides"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise OverridesError(
            f"overrides {uri}: JSON must be a list of objects "
            '({"source_uri": ..., "decision": "keep"|"drop"}) or {"overrides": [...]}'
        )
    for i, record in enumerate(data, start=1):
        missing = [c for c in ("source_uri", "decision") if c not in record]
        if missing:
            raise OverridesError(f"overrides {uri}: entry {i} lacks {', '.join(missing)}")
    return list(enumerate(data, start=1))


def parse_overrides(data: bytes, uri: str, root: str | None = None) -> pa.Table:
    """Validated rows (source_uri, decision, note) of an overrides file's bytes."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OverridesError(f"overrides {uri}: not UTF-8 text ({exc.reason})") from exc
    is_json = uri.lower().endswith(".json") or text.lstrip()[:1] in ("[", "{")
    records = _records_json(text, uri) if is_json else _records_csv(text, uri)
    where = "entry" if is_json else "line"
    seen: dict[str, tuple[str, str | None]] = {}
    for position, record in records:
        source = str(record.get("source_uri") or "").strip()
        decision = str(record.get("decision") or "").strip().lower()
        note = record.get("note")
        note = _one_line(note) if note not in (None, "") else None
        if not source:
            raise OverridesError(f"overrides {uri}: {where} {position}: empty source_uri")
        if decision not in DECISIONS:
            raise OverridesError(
                f"overrides {uri}: {where} {position}: decision {decision!r} for {source} "
                f"is not one of {', '.join(DECISIONS)}"
            )
        source = resolve(source, root)
        if source in seen and seen[source][0] != decision:
            raise OverridesError(
                f"overrides {uri}: {where} {position}: {source} is both "
                f"{seen[source][0]} and {decision}"
            )
        seen[source] = (decision, note)
    return pa.Table.from_pylist(
        [{"source_uri": s, "decision": d, "note": n} for s, (d, n) in sorted(seen.items())],
        schema=SCHEMA,
    )


def resolve(source: str, root: str | None) -> str:
    """A path relative to the lake (no scheme, no leading '/') becomes a full source_uri."""
    if root and "://" not in source and not source.startswith("/"):
        return join(root, source)
    return source


def load_overrides(uri: str, storage: StorageConfig, root: str | None = None) -> pa.Table:
    """The overrides file at `uri` (CSV or JSON) as rows (source_uri, decision, note).
    Raises OverridesError, one line, on anything it cannot honour as written."""
    return parse_overrides(_read_bytes(uri, storage), uri, root)


# --- Sticky overrides across versions --------------------------------------------------


def recorded(manifest: dict[str, Any] | None) -> pa.Table:
    """The overrides a published version honoured (its manifest's `overrides`)."""
    rows = (manifest or {}).get("overrides") or []
    return pa.Table.from_pylist([{k: r.get(k) for k in SCHEMA.names} for r in rows], schema=SCHEMA)


def merged(previous: pa.Table, given: pa.Table) -> pa.Table:
    """The previous version's overrides updated by this run's file (`auto` forgets one)."""
    by_uri = {r["source_uri"]: r for r in previous.to_pylist()}
    for row in given.to_pylist():
        if row["decision"] == AUTO:
            by_uri.pop(row["source_uri"], None)
        else:
            by_uri[row["source_uri"]] = row
    return pa.Table.from_pylist([by_uri[u] for u in sorted(by_uri)], schema=SCHEMA)


def changed(previous: pa.Table, current: pa.Table) -> set[str]:
    """Files whose decision or note differs between two override sets (added, changed
    or forgotten): an incremental run processes them again."""
    before = {r["source_uri"]: (r["decision"], r["note"]) for r in previous.to_pylist()}
    now = {r["source_uri"]: (r["decision"], r["note"]) for r in current.to_pylist()}
    return {u for u in before.keys() | now.keys() if before.get(u) != now.get(u)}


def newly_dropped(previous: pa.Table, current: pa.Table) -> set[str]:
    """Files that gained a drop override: duplicates kept out in their favour are
    decided again."""
    before = {r["source_uri"]: r["decision"] for r in previous.to_pylist()}
    return {
        r["source_uri"]
        for r in current.to_pylist()
        if r["decision"] == DROP and before.get(r["source_uri"]) != DROP
    }


# --- The work rows ---------------------------------------------------------------------


def with_overrides(work: pa.Table, overrides: pa.Table | None) -> pa.Table:
    """`work` (rows with source_uri) plus the `override` and `override_note` columns."""
    for name in (OVERRIDE, OVERRIDE_NOTE):
        if name in work.column_names:
            work = work.drop_columns([name])
    if overrides is None or overrides.num_rows == 0:
        nulls = pa.nulls(work.num_rows, pa.string())
        return work.append_column(OVERRIDE, nulls).append_column(OVERRIDE_NOTE, nulls)
    at = pc.index_in(work["source_uri"], value_set=overrides["source_uri"])
    return work.append_column(OVERRIDE, pc.take(overrides["decision"], at)).append_column(
        OVERRIDE_NOTE, pc.take(overrides["note"], at)
    )


def summary(overrides: pa.Table, snapshot: pa.Table) -> dict[str, Any]:
    """What report.json says about the overrides in force (counts from the file itself;
    the outcome per file is in the tables' `override` column)."""
    listed = pc.is_in(overrides["source_uri"], value_set=snapshot["source_uri"])
    decisions = overrides["decision"].to_pylist()
    unmatched = overrides.filter(pc.invert(listed))["source_uri"].to_pylist()
    return {
        "given": {KEEP: decisions.count(KEEP), DROP: decisions.count(DROP)},
        "not_in_lake": len(unmatched),
        "not_in_lake_examples": unmatched[:20],
    }
