"""``python -m pipeline``: corpus -> TFRecords, errors-*.jsonl and metadata.json.

Examples:
  python -m pipeline --corpus msp-podcast --data-root DIR --output OUT
  python -m pipeline --corpus csv --manifest FILE.csv --output OUT --direct_num_workers 2
See docs/pipeline.md for every flag and the Dataflow command.
"""

from __future__ import annotations

import logging
import sys

from pipeline.flags import help_parser

HELP_FLAGS = ("-h", "--help")


def main(argv: list[str] | None = None) -> int:
    flags = sys.argv[1:] if argv is None else list(argv)
    if any(flag in HELP_FLAGS for flag in flags):
        help_parser().parse_known_args(flags)  # prints the help and exits, before Beam is imported
    from pipeline.corpus import CorpusError
    from pipeline.options import OptionsError, PreprocessOptions
    from pipeline.run import OutputExistsError, run
    from pipeline.summary import format_summary

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("pipeline").setLevel(logging.INFO)  # our progress; Beam's INFO is noise here
    options = PreprocessOptions(flags)
    try:
        options.check()
        run(options)
    except (OptionsError, CorpusError, OutputExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(options.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
