"""The flags of ``python -m pipeline``, defined without Beam so that ``--help`` answers at once.

``PreprocessOptions`` (a Beam ``PipelineOptions``) adds them to Beam's parser; the
command's ``--help`` adds them to a plain one, the same as Beam's, before Beam is
imported (seconds on a small machine). The values a flag takes that the corpus reader
and the record sinks use are defined here, with the flag, and re-exported there.
"""

from __future__ import annotations

import argparse

from pipeline.audio_decoding import DEFAULT_MAX_SECONDS, SAMPLE_RATES
from pipeline.params import CHUNK_SHIFTS, PAD_MODES, SHORT_RULES, STORAGE_DTYPES, FeatureParams

MSP_PODCAST = "msp-podcast"
CSV = "csv"
CORPUS_KINDS = (MSP_PODCAST, CSV)

DEFAULT_GZIP_LEVEL = 2
GZIP_LEVELS = range(0, 4)
"""ISA-L's levels: 0 fastest and largest, 3 smallest."""

_DEFAULTS = FeatureParams()


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    dest = name.replace("-", "_")
    names = [f"--{name}"] + ([f"--{dest}"] if dest != name else [])
    parser.add_argument(*names, dest=dest, **kwargs)


def _default(field: str) -> str:
    return f"default {getattr(_DEFAULTS, field)}"


def help_parser() -> argparse.ArgumentParser:
    """A parser that answers ``--help`` as Beam's does (Beam builds one with ``allow_abbrev=False``)."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds every flag of the command, each in its hyphen and underscore spelling."""
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
