"""Vertex AI hyperparameter tuning: report the dev CCC and keep each trial's outputs apart.

A tuning job runs the same trainer command once per trial, with only the tuned flags
changed, and reads each trial's objective from the file that ``cloudml-hypertune``
writes. That package is optional: the trainer image installs it and requirements.txt
does not, so it is imported only when a run is a tuning trial (``--hypertune``, or the
variables Vertex AI sets in a trial) and a trial without it stops at once instead of
training for hours and never reporting.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Callable, Mapping

METRIC = "dev_ccc_mean"
"""The objective each trial reports; the tuning config's ``metricId`` names it."""

TRIAL_VARIABLES = ("CLOUD_ML_HP_METRIC_TAG", "CLOUD_ML_HP_METRIC_FILE", "CLOUD_ML_TRIAL_ID")
INSTALL_HINT = "pip install cloudml-hypertune==0.1.0.dev6 (the trainer image has it)"

Reporter = Callable[[float, int], None]
"""Called with (dev CCC mean, epoch) after each epoch."""


class HypertuneError(RuntimeError):
    """A tuning trial cannot report its metric."""


def in_trial(environ: Mapping[str, str] = os.environ) -> bool:
    return any(environ.get(name) for name in TRIAL_VARIABLES)


def metric_reporter(requested: bool, environ: Mapping[str, str] = os.environ) -> Reporter | None:
    """A reporter for tuning trials, None for every other run."""
    if not (requested or in_trial(environ)):
        return None
    try:
        import hypertune
    except ImportError as error:
        raise HypertuneError(f"hyperparameter tuning needs the cloudml-hypertune package: {INSTALL_HINT}") from error
    tag = environ.get("CLOUD_ML_HP_METRIC_TAG") or METRIC
    client = hypertune.HyperTune()

    def report(value: float, epoch: int) -> None:
        client.report_hyperparameter_tuning_metric(hyperparameter_metric_tag=tag, metric_value=value,
                                                   global_step=epoch)

    return report


def trial_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """The tuning trial this process runs: ``CLOUD_ML_TRIAL_ID``, else ``TF_CONFIG``'s task.trial."""
    if environ.get("CLOUD_ML_TRIAL_ID"):
        return environ["CLOUD_ML_TRIAL_ID"]
    try:
        trial = json.loads(environ.get("TF_CONFIG") or "{}").get("task", {}).get("trial")
    except (ValueError, AttributeError):
        return None
    return str(trial) if trial else None


def trial_job_dir(job_dir: str, environ: Mapping[str, str] = os.environ) -> str:
    """``JOB_DIR/trial-N`` inside a tuning trial, else ``job_dir``.

    Every trial gets the same ``--job-dir``, and a job folder refuses a second run with
    other settings, so without this only the first trial could write there.
    """
    trial = trial_id(environ)
    return posixpath.join(job_dir, f"trial-{trial}") if trial else job_dir
