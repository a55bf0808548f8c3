"""The end-of-run summary, read back from the outputs themselves.

Reading ``metadata.json`` and ``errors-*.jsonl`` (rather than the runner's metrics)
gives the same table for every runner, and shows what a consumer will actually find.
"""

from __future__ import annotations

import collections
import json

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.metadata import Metadata
from pipeline.paths import literal_pattern
from pipeline.transforms import ERRORS_PREFIX, ERRORS_SUFFIX


def read_errors(output: str) -> list[dict]:
    """Every error record of a finished run."""
    pattern = FileSystems.join(literal_pattern(output), f"{ERRORS_PREFIX}-*-of-*{ERRORS_SUFFIX}")
    errors = []
    for match in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        with FileSystems.open(match.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            errors.extend(json.loads(line) for line in handle.read().decode("utf-8").splitlines() if line)
    return errors


def reason_kind(reason: str) -> str:
    """A reason's category, the text before its first ':' (details follow it)."""
    return reason.split(":", 1)[0]


def format_summary(output: str, top: int = 5) -> str:
    """Per split: inputs, written, rejected; the most frequent rejection reasons; where."""
    metadata = Metadata.load(output)
    rows = [("split", "inputs", "written", "rejected")]
    rows += [(name, str(info.index_size), str(info.count), str(info.rejected))
             for name, info in sorted(metadata.splits.items())]
    rows.append(("total", *(str(sum(getattr(i, f) for i in metadata.splits.values()))
                            for f in ("index_size", "count", "rejected"))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))) for row in rows]
    reasons = collections.Counter(reason_kind(e["reason"]) for e in read_errors(output))
    if reasons:
        lines.append("top rejection reasons:")
        lines += [f"  {count:>6}  {kind}" for kind, count in reasons.most_common(top)]
    lines.append(f"output: {output} (records, errors-*{ERRORS_SUFFIX}, metadata.json)")
    return "\n".join(lines)
