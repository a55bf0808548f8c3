"""Command-line flags of ``python -m pipeline`` as a Beam ``PipelineOptions`` subclass.

Flags are spelled with hyphens as the README writes them; each also accepts the
underscore spelling because Beam hands options to workers as ``--dest=value``. The
feature flags default to None so that ``FeatureParams`` keeps the only copy of the
defaults; ``feature_params()`` builds the one settings object of a run.

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

from pipeline.audio import DEFAULT_MAX_SECONDS, SAMPLE_RATES
from pipeline.corpus import CORPUS_KINDS, CSV, MSP_PODCAST
from pipeline.params import CHUNK_SHIFTS, PAD_MODES, SHORT_RULES, STORAGE_DTYPES, FeatureParams
from pipeline.sinks import DEFAULT_GZIP_LEVEL, GZIP_LEVELS

_DEFAULTS = FeatureParams()
_FEATURE_FLAGS = ("max_seconds", "chunk_seconds", "chunk_shift", "short_rule", "pad_mode", "storage_dtype")


def _flag(parser, name: str, **kwargs) -> None:
    dest = name.replace("-", "_")
    names = [f"--{name}"] + ([f"--{dest}"] if dest != name else [])
    parser.add_argument(*names, dest=dest, **kwargs)


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


_GLOB_CHARACTERS = ("[", "]", "*", "?")
_JOB_LABEL = re.compile(r"[a-z0-9_-]+=[a-z0-9_-]*(,[a-z0-9_-]+=[a-z0-9_-]*)*")
"""What a Dataflow job label (``key=value``, lower case, digits, ``_``, ``-``) looks like."""


def _is_path(value: str) -> bool:
    """A label CSV path: an existing file, or anything that is neither ``key=value`` nor JSON
    (a path may hold an ``=``, a job label cannot hold ``/`` or ``.``)."""
    if os.path.exists(value) or "://" in value:
        return True
    return not _JOB_LABEL.fullmatch(value.strip()) and not value.lstrip().startswith("{")


def _default(field: str) -> str:
    return f"default {getattr(_DEFAULTS, field)}"


class OptionsError(ValueError):
    """Missing or conflicting flags; the message names the flag."""


class PreprocessOptions(PipelineOptions):
    """Corpus, output and feature settings of one preprocessing run."""

    def __init__(self, flags: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(route_label_file(sys.argv[1:] if flags is None else flags), **kwargs)

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        _flag(parser, "corpus", choices=CORPUS_KINDS,
              help="input layout: an MSP-Podcast release folder or a CSV manifest")
        _flag(parser, "data-root", help="MSP-Podcast folder holding Audios/ and Labels/")
        _flag(parser, "labels-file", help="label CSV, also given as --labels PATH (default "
                                          "DATA_ROOT/Labels/labels_consensus.csv, else labels_concensus.csv)")
        _flag(parser, "manifest", help="CSV with columns path,split,arousal,valence,dominance[,speaker]")
        _flag(parser, "unlabeled", help="glob of unlabelled audio files, added as split 'unlabeled'")
        _flag(parser, "unlabeled-count", type=int, help="seeded random sample of this many unlabelled files")
        _flag(parser, "seed", type=int, default=0, help="seed of the unlabelled sample (default 0)")
        _flag(parser, "output", help="output folder (local or gs://) for records, errors and metadata.json")
        _flag(parser, "num-shards", type=int, default=0,
              help="record files per split; 0 (default) lets the runner choose and streams")
        _flag(parser, "gzip-level", type=int, default=DEFAULT_GZIP_LEVEL,
              help=f"ISA-L compression level of the record files, 0 (fastest) to 3 (smallest, about "
                   f"zlib's 6); default {DEFAULT_GZIP_LEVEL}. The records are the same at any level")
        _flag(parser, "max-seconds", type=float, help=f"T_max of paper Eq. 2 ({_default('max_seconds')})")
        _flag(parser, "max-audio-seconds", type=float, default=DEFAULT_MAX_SECONDS,
              help=f"longer audio is rejected from its header before decoding, which bounds one file's "
                   f"decoding memory to about 4 bytes x this x its sample rate (default {DEFAULT_MAX_SECONDS:g}; "
                   f"sample rates outside {SAMPLE_RATES[0]}..{SAMPLE_RATES[1]} Hz are rejected too)")
        _flag(parser, "chunk-seconds", type=float, help=f"chunk length w_c ({_default('chunk_seconds')})")
        _flag(parser, "chunk-shift", choices=CHUNK_SHIFTS,
              help=f"chunk placement, floor as the reference or float as Eq. 1 ({_default('chunk_shift')})")
        _flag(parser, "short-rule", choices=SHORT_RULES,
              help=f"utterances shorter than one chunk are tiled or zero-padded ({_default('short_rule')})")
        _flag(parser, "pad-mode", choices=PAD_MODES,
              help=f"STFT edge padding ({_default('pad_mode')}, as librosa < 0.10 in the reference)")
        _flag(parser, "log-mel", action="store_true",
              help="store log(mel + 1e-6) instead of the reference's linear power mel")
        _flag(parser, "storage-dtype", choices=STORAGE_DTYPES,
              help=f"dtype of the stored features ({_default('storage_dtype')})")

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
        if any(character in self.output for character in _GLOB_CHARACTERS):
            raise OptionsError(f"--output {self.output!r} holds one of {' '.join(_GLOB_CHARACTERS)}: Beam's file "
                               "sinks read the folder back as a glob pattern, so choose a name without them")
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
