"""Command-line flags of ``python -m pipeline`` as a Beam ``PipelineOptions`` subclass.

Flags are spelled with hyphens as the README writes them; each also accepts the
underscore spelling because Beam hands options to workers as ``--dest=value``. The
feature flags default to None so that ``FeatureParams`` keeps the only copy of the
defaults; ``feature_params()`` builds the one settings object of a run. The flags are
defined in ``pipeline.flags``, which imports no Beam, so that ``--help`` answers at once.

``--labels`` is also Beam's flag for Dataflow job labels (``key=value``), so a
``--labels`` value that is an existing file or not shaped like a job label is taken as
the label CSV (``--labels-file``) before Beam parses the flags, and job labels keep working.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.flags import CORPUS_KINDS, CSV, GZIP_LEVELS, MSP_PODCAST, add_arguments
from pipeline.params import FeatureParams

_DEFAULTS = FeatureParams()
_FEATURE_FLAGS = ("max_seconds", "chunk_seconds", "chunk_shift", "short_rule", "pad_mode", "storage_dtype")


def route_label_file(flags: Sequence[str]) -> list[str]:
    """Rewrites ``--labels PATH`` to ``--labels-file PATH``; ``--labels key=value`` stays Beam's."""
    routed: list[str] = []
    flags = list(flags)
    i = 0
    while i < len(flags):
        flag = flags[i]
        if flag == "--labels" and i + 1 < len(flags) and _is_path(flags[i + 1]):
            routed += ["--labels-file", flags[i + 1]]
            i += 2
            continue
        if flag.startswith("--labels=") and _is_path(flag.split("=", 1)[1]):
            flag = "--labels-file=" + flag.split("=", 1)[1]
        routed.append(flag)
        i += 1
    return routed


_JOB_LABEL = re.compile(r"[a-z0-9_-]+=[a-z0-9_-]*(,[a-z0-9_-]+=[a-z0-9_-]*)*")
"""What a Dataflow job label (``key=value``, lower case, digits, ``_``, ``-``) looks like."""


def _is_path(value: str) -> bool:
    """A label CSV path: an existing file, or anything that is neither ``key=value`` nor JSON
    (a path may hold an ``=``, a job label cannot hold ``/`` or ``.``)."""
    if os.path.exists(value) or "://" in value:
        return True
    return not _JOB_LABEL.fullmatch(value.strip()) and not value.lstrip().startswith("{")


class OptionsError(ValueError):
    """Missing or conflicting flags; the message names the flag."""


class PreprocessOptions(PipelineOptions):
    """Corpus, output and feature settings of one preprocessing run."""

    def __init__(self, flags: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(route_label_file(sys.argv[1:] if flags is None else flags), **kwargs)

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add_arguments(parser)

    def feature_params(self) -> FeatureParams:
        """The run's settings: the flags given, ``FeatureParams`` defaults for the rest."""
        given = {name: getattr(self, name) for name in _FEATURE_FLAGS if getattr(self, name) is not None}
        return dataclasses.replace(_DEFAULTS, log_mel=bool(self.log_mel), **given)

    def check(self) -> None:
        """Raises OptionsError naming the first missing or conflicting flag."""
        if self.corpus is None:
            raise OptionsError(f"--corpus is required: one of {', '.join(CORPUS_KINDS)}")
        if not self.output:
            raise OptionsError("--output is required")
        if self.corpus == MSP_PODCAST:
            if not self.data_root:
                raise OptionsError("--corpus msp-podcast needs --data-root DIR")
            if self.manifest:
                raise OptionsError("--manifest belongs to --corpus csv; use --data-root for msp-podcast")
        if self.corpus == CSV:
            if not self.manifest:
                raise OptionsError("--corpus csv needs --manifest FILE.csv")
            if self.data_root or self.labels_file:
                raise OptionsError("--data-root and --labels belong to --corpus msp-podcast")
        if self.unlabeled_count is not None:
            if not self.unlabeled:
                raise OptionsError("--unlabeled-count needs --unlabeled GLOB")
            if self.unlabeled_count < 1:
                raise OptionsError("--unlabeled-count must be at least 1")
        if self.gzip_level not in GZIP_LEVELS:
            raise OptionsError(f"--gzip-level must be 0..3 (ISA-L levels), got {self.gzip_level}")
        if not self.max_audio_seconds > 0:
            raise OptionsError(f"--max-audio-seconds must be positive, got {self.max_audio_seconds}")
        if self.num_shards < 0:
            raise OptionsError("--num-shards must be 0 (runner decides) or positive")
        try:
            self.feature_params()
        except ValueError as error:
            raise OptionsError(f"feature flags: {error}") from error
