"""Training entry point: argument parsing and wiring only (the logic lives in ``model/``).

    python trainer.py --data-dir OUT --job-dir JOB --model temp-gru [--setting ssl] ...

Runs locally or as a Vertex AI custom job (``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR`` and
``AIP_TENSORBOARD_LOG_DIR`` take precedence over ``--job-dir`` subfolders). Re-running the
same command on the same ``--job-dir`` resumes from the last completed stage.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from typing import Sequence

from model.train_config import KMEANS_INITS, OPTIMIZER_MODES, PRECISIONS, TrainConfig, parse_attributes
from model.variants import VARIANTS

CONFIG_FILE = "config.json"
"""The job record in the job folder (model.jobs.start_job writes it)."""


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="trainer.py", description="Train temporal-enhanced DeepEmoCluster (paper Algorithm 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="pipeline output (local or gs://)")
    parser.add_argument("--job-dir", required=True, help="where this run writes (local or gs://)")
    parser.add_argument("--model", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--setting", choices=("fsl", "ssl"), default=defaults.setting,
                        help="fsl: labelled data only; ssl: also stage I on the unlabeled split")
    parser.add_argument("--attributes", default="arousal",
                        help="arousal, valence or dominance: one model per attribute as the reference; "
                             "'all': one multitask model with three outputs")
    parser.add_argument("--clusters", type=_integer, default=defaults.clusters, help="Q of K-means")
    parser.add_argument("--epochs", type=_integer, default=defaults.epochs)
    parser.add_argument("--batch-size", type=_integer, default=defaults.batch_size, help="sentences per batch")
    parser.add_argument("--patience", type=_integer, default=defaults.patience,
                        help="stop after this many epochs without dev improvement (0: never)")
    parser.add_argument("--unlabeled-count", type=_integer, default=defaults.unlabeled_count,
                        help="seeded subset of the unlabeled split used in SSL (0: all of it)")
    parser.add_argument("--triplet-weight", type=float, default=defaults.triplet_weight, help="gamma of Eq. 7")
    parser.add_argument("--triplet-window", type=_integer, default=defaults.triplet_window,
                        help="W: positives lie within +-W/2 chunks of the anchor")
    parser.add_argument("--triplet-margin", type=float, default=defaults.triplet_margin, help="delta of Eq. 6")
    parser.add_argument("--triplets-per-sentence", type=_integer, default=defaults.triplets_per_sentence)
    parser.add_argument("--seed", type=_integer, default=defaults.seed)
    parser.add_argument("--jit-compile", action="store_true",
                        help="XLA-compile the training step (for GPUs: about 6x slower on CPU, docs/performance.md)")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help="mixed_bfloat16: the encoder's conv blocks in bfloat16 (float32 variables); "
                             "about 2x less CPU time per step on AVX-512 BF16 CPUs (docs/performance.md)")
    parser.add_argument("--distribute", choices=("none", "mirrored", "multiworker"), default=defaults.distribute)
    parser.add_argument("--ccc-level", choices=("chunk", "sentence"), default=defaults.ccc_level,
                        help="CCC loss over chunk predictions (reference) or sentence means")
    parser.add_argument("--optimizers", choices=OPTIMIZER_MODES, default=defaults.optimizers,
                        help="reference: SGD and Adam both over every weight but the top cluster layer, as the "
                             "authors' code (stage I steps only the SGD); paper: the paper's wording, SGD on the "
                             "encoder and Adam on the output layers (docs/training.md)")
    parser.add_argument("--encoder-lr", type=float, default=defaults.encoder_lr,
                        help="SGD learning rate (over every weight in reference mode, the encoder in paper mode)")
    parser.add_argument("--output-lr", type=float, default=defaults.output_lr,
                        help="Adam learning rate (over every weight in reference mode, the output layers in paper mode)")
    parser.add_argument("--classifier-lr", type=float, default=defaults.classifier_lr,
                        help="reference mode: learning rate of the top cluster layer's own SGD")
    parser.add_argument("--kmeans-iterations", type=_integer, default=defaults.kmeans_iterations)
    parser.add_argument("--kmeans-init", choices=KMEANS_INITS, default=defaults.kmeans_init,
                        help="random: start from randomly picked points, a new seed per clustering, empty clusters "
                             "repaired by splitting a large one (faiss, as the reference); k-means++: greedy "
                             "k-means++ seeding, empty clusters re-seeded at the farthest point")
    parser.add_argument("--reconstruction-weight", type=float, default=defaults.reconstruction_weight,
                        help="ae, vae: weight of the MSE reconstruction term")
    parser.add_argument("--kl-weight", type=float, default=defaults.kl_weight,
                        help="vae: weight of the KL term (per input element; 1 gives the ELBO)")
    parser.add_argument("--ladder-noise", type=float, default=defaults.ladder_noise,
                        help="ladder: std of the Gaussian noise on every level of the noisy encoder")
    parser.add_argument("--ladder-weights", type=_weights, default=",".join(map(str, defaults.ladder_weights)),
                        help="ladder: comma-separated denoising weights per encoder level, input level first, "
                             f"then the {len(defaults.ladder_weights) - 1} conv blocks")
    parser.add_argument("--init-from", metavar="RELEASE",
                        help="start from a converted release's network for the trained attribute, e.g. "
                             "pretrained/msp-podcast-v1.8-temp-cnn (needs its feature settings and temporal net)")
    parser.add_argument("--quiet", action="store_true", help="no per-step progress bars")
    parser.add_argument("--hypertune", action="store_true",
                        help="report dev_ccc_mean to Vertex AI hyperparameter tuning after each epoch "
                             "(needs cloudml-hypertune; also on when Vertex AI's trial variables are set)")
    return parser


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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, setting=args.setting, attributes=parse_attributes(args.attributes),
        clusters=args.clusters, epochs=args.epochs, batch_size=args.batch_size, patience=args.patience,
        unlabeled_count=args.unlabeled_count, triplet_weight=args.triplet_weight,
        triplet_window=args.triplet_window, triplet_margin=args.triplet_margin,
        triplets_per_sentence=args.triplets_per_sentence, seed=args.seed, jit_compile=args.jit_compile,
        precision=args.precision,
        distribute=args.distribute, optimizers=args.optimizers, encoder_lr=args.encoder_lr,
        output_lr=args.output_lr, classifier_lr=args.classifier_lr,
        kmeans_iterations=args.kmeans_iterations, kmeans_init=args.kmeans_init, ccc_level=args.ccc_level,
        reconstruction_weight=args.reconstruction_weight, kl_weight=args.kl_weight, ladder_noise=args.ladder_noise,
        ladder_weights=args.ladder_weights)


def run_record(config: TrainConfig, args: argparse.Namespace, metadata_json: str) -> dict:
    """What config.json holds: the resolved settings, the data's digest and library versions."""
    import apache_beam
    import keras
    import numpy
    import tensorflow as tf

    return {
        "config": config.to_dict(),
        "data_dir": args.data_dir,
        "data_metadata_sha256": hashlib.sha256(metadata_json.encode()).hexdigest(),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": numpy.__version__,
                     "apache_beam": apache_beam.__version__},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"trainer.py: error: {error}", file=sys.stderr)
        return 2

    from model.hypertune import HypertuneError, metric_reporter, trial_job_dir
    from model.jobs import JobError, start_job
    from model.multiworker import is_chief
    from model.training import Trainer, TrainingError, JobPaths
    from pipeline.metadata import Metadata, MetadataError

    try:
        metadata = Metadata.load(args.data_dir)
        required = ["train", "dev"] + (["unlabeled"] if config.uses_unlabeled else [])
        metadata.validate(required_splits=required, labelled_splits=["train", "dev"])
    except MetadataError as error:
        print(f"trainer.py: data error: {error}", file=sys.stderr)
        return 2
    if args.init_from:
        from model.convert_reference import ConversionError, check_init_from

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
        start_job(job, run_record(config, args, metadata.to_json()), write=is_chief(config.distribute))
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


if __name__ == "__main__":
    from model.allocator import use_fast_allocator
    use_fast_allocator()  # before TensorFlow: glibc malloc's page faults halve the CPU step (docs/performance.md)
    sys.exit(main())
