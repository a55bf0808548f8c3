"""The trainer's command line: flags generated from ``TrainConfig``, then wiring only.

    python trainer.py --data-dir OUT --job-dir JOB --model temp-gru [--setting ssl] ...
    python -m model.training ...    (the same command; what ``model.experiments`` runs)

Runs locally or as a Vertex AI custom job (``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR`` and
``AIP_TENSORBOARD_LOG_DIR`` take precedence over ``--job-dir`` subfolders). Re-running the
same command on the same ``--job-dir`` resumes from the last completed stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Callable, Sequence

from model.training.config import TrainConfig, flag_of, parse_attributes


def build_parser() -> argparse.ArgumentParser:
    """One flag per ``TrainConfig`` field, with the field's default and ``Flag``, then the run's own flags."""
    parser = argparse.ArgumentParser(
        prog="trainer.py", description="Train temporal-enhanced DeepEmoCluster (paper Algorithm 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="pipeline output (local or gs://)")
    parser.add_argument("--job-dir", required=True, help="where this run writes (local or gs://)")
    types = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", **_flag_arguments(field, types[field.name]))
    parser.add_argument("--init-from", metavar="RELEASE",
                        help="start from a converted release's network for the trained attribute, e.g. "
                             "pretrained/msp-podcast-v1.8-temp-cnn (needs its feature settings and temporal net)")
    parser.add_argument("--quiet", action="store_true", help="no per-step progress bars")
    parser.add_argument("--hypertune", action="store_true",
                        help="report dev_ccc_mean to Vertex AI hyperparameter tuning after each epoch "
                             "(needs cloudml-hypertune; also on when Vertex AI's trial variables are set)")
    return parser


def _flag_arguments(field: dataclasses.Field, kind: Any) -> dict[str, Any]:
    """``add_argument``'s keywords for one field: a bool is a switch; a tuple is given comma-separated
    (its default too, which argparse parses like a given value)."""
    flag = flag_of(field)
    if kind is bool:
        return {"action": "store_true", "default": field.default, "help": flag.help}
    arguments: dict[str, Any] = {"type": _FLAG_TYPES.get(kind), "choices": flag.choices, "help": flag.help}
    if flag.required:
        arguments["required"] = True
    else:
        arguments["default"] = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
    return arguments


def _weights(value: str) -> tuple[float, ...]:
    """A comma-separated list of floats."""
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def _integer(value: str) -> int:
    """An integer, also written as an integral float: Vertex AI hyperparameter tuning passes
    integer and discrete parameters as ``--clusters=10.0``."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r} (not a whole number)")
    return int(number)


_FLAG_TYPES: dict[Any, Callable[[str], Any]] = {
    int: _integer, float: float, tuple[float, ...]: _weights, tuple[str, ...]: parse_attributes}
"""A ``TrainConfig`` field's type -> the parser of its flag's value (none for strings)."""


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"trainer.py: error: {error}", file=sys.stderr)
        return 2

    from model.training.algorithm import Trainer, TrainingError
    from model.training.hypertune import HypertuneError, metric_reporter, trial_job_dir
    from model.training.job_folder import JobError, JobPaths, run_record, start_job
    from model.training.multiworker import is_chief
    from pipeline.metadata import Metadata, MetadataError

    try:
        metadata = Metadata.load(args.data_dir)
        required = ["train", "dev"] + (["unlabeled"] if config.uses_unlabeled else [])
        metadata.validate(required_splits=required, labelled_splits=["train", "dev"])
    except MetadataError as error:
        print(f"trainer.py: data error: {error}", file=sys.stderr)
        return 2
    if args.init_from:
        from model.serving.convert_reference import ConversionError, check_init_from

        try:
            check_init_from(args.init_from, metadata.params, config.variant.temporal, config.variant.clustering,
                            config.attributes)
        except (ConversionError, MetadataError) as error:
            print(f"trainer.py: error: {error}", file=sys.stderr)
            return 2
    try:
        report_metric = metric_reporter(args.hypertune)
    except HypertuneError as error:
        print(f"trainer.py: error: {error}", file=sys.stderr)
        return 2
    job = JobPaths.resolve(trial_job_dir(args.job_dir))
    try:
        # config.json and the checkpoint folder's owner.json: written by the chief replica only.
        start_job(job, run_record(config, args.data_dir, metadata.to_json()), write=is_chief(config.distribute))
    except JobError as error:
        print(f"trainer.py: error: {error}", file=sys.stderr)
        return 2
    try:
        Trainer(config, args.data_dir, job, metadata, verbose=0 if args.quiet else 1,
                report_metric=report_metric, init_from=args.init_from).run()
    except TrainingError as error:
        print(f"trainer.py: training error: {error}", file=sys.stderr)
        return 1
    return 0
