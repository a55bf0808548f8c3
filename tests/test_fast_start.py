"""``--help`` answers before TensorFlow, Keras or Beam is imported (issue 19, fast start).

Each command runs as a fresh process, as a user starts it, and reports the heavy modules
its ``--help`` left in ``sys.modules``. The times are measured by ``bench/startup.py``, not
here: what is checked is the import structure that makes them short. The pipeline's help
is built without Beam, so it is also compared with the one Beam's parser prints.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.flags import help_parser

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("tensorflow", "keras", "apache_beam", "sklearn", "matplotlib", "librosa")
HELP_PROBE = """
import json, runpy, sys
target, sys.argv = sys.argv[1], [sys.argv[1], "--help"]
try:
    runpy.run_path(target, run_name="__main__") if target.endswith(".py") else runpy.run_module(
        target, run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
print(json.dumps([code, [m for m in HEAVY if m in sys.modules]]))
"""
COMMANDS = ("pipeline", "trainer.py", "model.predict", "model.evaluate", "model.experiments", "model.convert_reference")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_no_tensorflow_keras_or_beam(command: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{HELP_PROBE}", command], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    *help_text, report = result.stdout.splitlines()
    code, loaded = json.loads(report)
    assert code == 0 and "usage:" in "\n".join(help_text)
    assert loaded == [], f"{command} --help imported {loaded}"


def test_the_pipelines_help_is_the_one_beams_parser_prints() -> None:
    from pipeline.options import PreprocessOptions

    with contextlib.redirect_stdout(io.StringIO()) as beams, pytest.raises(SystemExit):
        PreprocessOptions(["--help"])
    assert help_parser().format_help() == beams.getvalue()



SERVING_MODULES = ("model.serving.export", "model.serving.predictor", "model.serving.predict",
                   "model.serving.release_serving", "model.serving.convert_reference",
                   "model.serving.graph_frontend")
SERVING_PROBE = """
import ast, importlib, importlib.util, json, sys
todo, seen = list(sys.argv[1:]), set()
while todo:
    name = todo.pop()
    if name in seen or name.split(".")[0] not in ("model", "pipeline"):
        continue
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        continue
    seen.add(name)
    for node in ast.walk(ast.parse(open(spec.origin).read())):
        if isinstance(node, ast.Import):
            todo.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            todo.extend([node.module, *(node.module + "." + alias.name for alias in node.names)])
for name in sorted(seen):
    importlib.import_module(name)
print(json.dumps([sorted(seen), "apache_beam" in sys.modules]))
"""


def test_the_serving_path_imports_no_beam() -> None:
    """Exporting, serving and converting models needs TensorFlow, never Apache Beam.

    Every project module the serving modules import, at the top, under ``TYPE_CHECKING`` or
    inside a function (where the heavy imports wait), and so on down, is imported in a
    fresh process: none may pull in Beam.
    """
    result = subprocess.run([sys.executable, "-c", SERVING_PROBE, *SERVING_MODULES], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported, beam = json.loads(result.stdout.splitlines()[-1])
    assert set(SERVING_MODULES) <= set(imported)
    assert not beam, f"importing {imported} imported apache_beam"
