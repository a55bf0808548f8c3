"""The entry points run TensorFlow on mimalloc without the user doing anything (issue 20).

A ``sitecustomize`` on PYTHONPATH records, when each interpreter of the command exits, whether
libmimalloc is mapped into it and what ``LD_PRELOAD`` it saw: ``trainer.py --help`` exits
before TensorFlow is imported, so this checks in seconds what the step would run on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.training import allocator

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import atexit, json, os
def _record():
    with open(os.environ["ALLOCATOR_PROBE_OUT"], "a") as out:
        maps = open("/proc/self/maps").read()
        out.write(json.dumps({"mapped": "libmimalloc" in maps, "preload": os.environ.get("LD_PRELOAD", ""),
                              "purge": os.environ.get("MIMALLOC_PURGE_DELAY")}) + "\\n")
atexit.register(_record)
"""

needs_library = pytest.mark.skipif(not sys.platform.startswith("linux") or allocator.library_path() is None,
                                   reason="cmeel-mimalloc (requirements.txt) is not installed")


def probe(tmp_path: Path, script: str, **env: str) -> tuple[list[dict[str, object]], str]:
    (tmp_path / "sitecustomize.py").write_text(PROBE)
    out = tmp_path / "probe.jsonl"
    environ = {key: value for key, value in os.environ.items()
               if key not in ("LD_PRELOAD", allocator.MARKER, allocator.OPT_OUT, "MIMALLOC_PURGE_DELAY")}
    environ.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", ALLOCATOR_PROBE_OUT=str(out), **env)
    completed = subprocess.run([sys.executable, str(ROOT / script), "--help"], env=environ, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], completed.stderr


@needs_library
def test_trainer_runs_on_mimalloc(tmp_path: Path) -> None:
    records, stderr = probe(tmp_path, "trainer.py")
    assert records[-1]["mapped"], (records, stderr)
    assert records[-1]["purge"] == "-1"
    assert len(records) == 1, "re-executes once and only once"


@needs_library
def test_opt_out_keeps_the_system_allocator(tmp_path: Path) -> None:
    records, stderr = probe(tmp_path, "trainer.py", DEC_SYSTEM_ALLOCATOR="1")
    assert records == [{"mapped": False, "preload": "", "purge": None}]
    assert "mimalloc" not in stderr


def test_missing_library_falls_back_with_one_note(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(allocator, "library_path", lambda: None)
    monkeypatch.setattr(allocator, "loaded_allocator", lambda: None)
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail("must not re-execute without the library"))
    env: dict[str, str] = {}
    allocator.use_fast_allocator(env)
    allocator.use_fast_allocator(env)
    assert capsys.readouterr().err.count("cmeel-mimalloc is not loaded") == 1
    assert allocator.fast_allocator_env(env) == env


def test_failed_preload_does_not_loop(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A library that ld.so refused to preload: the re-executed process notes it and goes on."""
    monkeypatch.setattr(allocator, "library_path", lambda: "/lib/libmimalloc.so.3")
    monkeypatch.setattr(allocator, "loaded_allocator", lambda: None)
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail("must not re-execute twice"))
    allocator.use_fast_allocator({"LD_PRELOAD": "/lib/libmimalloc.so.3", allocator.MARKER: "1"})
    assert "not loaded" in capsys.readouterr().err


def test_demo_commands_get_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """tools/run_demo.py hands every command (pipeline, evaluation, prediction too) the preload."""
    monkeypatch.setattr(allocator, "library_path", lambda: "/lib/libmimalloc.so.3")
    monkeypatch.delenv(allocator.OPT_OUT, raising=False)
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import run_demo
    finally:
        sys.path.remove(str(ROOT / "tools"))
    seen = {}

    def fake_run(command: list[str], cwd: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        seen.update(env)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(run_demo.subprocess, "run", fake_run)
    run_demo.run_step("probe", [sys.executable, "-c", "pass"])
    assert "/lib/libmimalloc.so.3" in seen["LD_PRELOAD"].split() and seen["MIMALLOC_PURGE_DELAY"] == "-1"
