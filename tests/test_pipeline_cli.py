"""``python -m pipeline`` end to end, its refusals, and the Dataflow graph."""

import glob
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
from apache_beam.portability.api import beam_runner_api_pb2

from pipeline.__main__ import main
from pipeline.metadata import Metadata
from pipeline.options import PreprocessOptions
from pipeline.run import build_pipeline

REPO = Path(__file__).resolve().parents[1]


def test_cli_end_to_end_on_the_tiny_csv_manifest(tiny_csv_manifest, tmp_path):
    output = tmp_path / "records"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--corpus", "csv", "--manifest", str(tiny_csv_manifest),
         "--output", str(output), "--max-seconds", "2", "--chunk-seconds", "0.5", "--storage-dtype", "float32",
         "--gzip-level", "3", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["split", "inputs", "written", "rejected"]
    assert [line.split() for line in lines[1:6]] == [
        ["dev", "6", "6", "0"], ["test", "6", "6", "0"], ["train", "12", "12", "0"], ["unlabeled", "6", "6", "0"],
        ["total", "30", "30", "0"]]
    assert f"output: {output}" in result.stdout
    assert "30 inputs: dev 6, test 6, train 12, unlabeled 6" in result.stderr
    for pattern in ("train-*-of-*.tfrecord.gz", "dev-*-of-*.tfrecord.gz", "test-*-of-*.tfrecord.gz",
                    "unlabeled-*-of-*.tfrecord.gz", "errors-*-of-*.jsonl", "metadata.json", "inputs.jsonl"):
        assert glob.glob(str(output / pattern)), pattern
    metadata = Metadata.load(str(output))
    metadata.validate(required_splits=("train", "dev", "test", "unlabeled"), expected_shape=(4, 31, 128))
    assert metadata.params.storage_dtype == "float32" and metadata.source["manifest"] == str(tiny_csv_manifest)
    assert metadata.source["gzip_level"] == 3 and not (output / "tmp-train-mels").exists()
    assert not metadata.splits["unlabeled"].labelled and metadata.splits["train"].labelled


def test_cli_refuses_bad_flags_and_a_used_output_folder(edge_corpus, tmp_path, capsys):
    assert main(["--corpus", "csv", "--output", str(tmp_path / "o")]) == 2
    assert "--corpus csv needs --manifest" in capsys.readouterr().err
    assert main(["--corpus", "csv", "--manifest", str(edge_corpus.manifest), "--output", str(tmp_path / "o"),
                 "--gzip-level", "4"]) == 2
    assert "--gzip-level must be 0..3" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "train-00000-of-00001.tfrecord.gz").write_bytes(b"")
    assert main(["--corpus", "csv", "--manifest", str(edge_corpus.manifest), "--output", str(used)]) == 2
    assert "already holds pipeline outputs" in capsys.readouterr().err
    no_train = tmp_path / "no_train.csv"
    no_train.write_text("path,split,arousal,valence,dominance\na.wav,dev,1,2,3\n")
    assert main(["--corpus", "csv", "--manifest", str(no_train), "--output", str(tmp_path / "o")]) == 2
    assert "no 'train' split" in capsys.readouterr().err


DATAFLOW_FLAGS = ["--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west1",
                  "--temp_location", "gs://my-bucket/tmp", "--staging_location", "gs://my-bucket/staging",
                  "--setup_file", "./setup.py", "--num_workers", "4", "--max_num_workers", "20",
                  "--dry_run", "True"]
"""``--dry_run`` also keeps option validation offline (it skips the bucket checks) when the
Google Cloud extra is installed."""


def test_dataflow_graph_builds_and_translates_without_submitting(edge_corpus, tmp_path):
    options = PreprocessOptions(DATAFLOW_FLAGS + ["--corpus", "csv", "--manifest", str(edge_corpus.manifest),
                                                  "--output", str(tmp_path / "out")])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    proto = pipeline.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    for step in ("ReadInputs", "DecodeTrain", "FeatureStats", "SpillTrainMels", "EncodeTrain", "EncodeOtherSplits",
                 "WriteRecords", "WriteErrors", "LabelStats", "CountOutcomes", "RemoveSpill", "WriteMetadata"):
        assert step in names
    assert {"WriteRecords/Splits[train]/Write[train]", "WriteRecords/Splits[other_splits]/Write[dev]",
            "WriteRecords/Splits[other_splits]/Write[test]"} <= names
    rebuilt = beam.Pipeline.from_runner_api(proto, pipeline.runner, options)
    assert len(rebuilt.to_runner_api().components.transforms) == len(proto.components.transforms)


def test_dataflow_runner_translates_the_graph_in_a_dry_run(edge_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # --setup_file ./setup.py
    options = PreprocessOptions(DATAFLOW_FLAGS + ["--corpus", "csv", "--manifest", str(edge_corpus.manifest),
                                                  "--output", str(tmp_path / "out")])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    translated = pipeline.run().job.proto_pipeline
    names = {t.unique_name for t in translated.components.transforms.values()}
    assert {"EncodeOtherSplits/Encode", "EncodeTrain/Encode",
            "DecodeTrain/Decode/ParDo(_Decode)", "SpillTrainMels/Write/Write/WriteImpl/WriteBundles",
            "RemoveSpill/Remove", "WriteMetadata/Write"} <= names
    (environment,) = translated.components.environments.values()
    staged = {beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(a.role_payload).staged_name
              for a in environment.dependencies}
    assert "workflow.tar.gz" in staged  # the sdist of setup.py that every worker installs
