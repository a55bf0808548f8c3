"""Installs the project's packages; Dataflow workers use it via ``--setup_file ./setup.py``."""

from pathlib import Path

import setuptools

HERE = Path(__file__).parent

# Workers need the audio and record dependencies; the pins stay in requirements.txt.
WORKER_REQUIREMENTS = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow-cpu==2.21.0",
    "librosa==0.11.0",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "isal==1.9.1",
    "threadpoolctl==3.8.0",
]

setuptools.setup(
    name="deepemocluster",
    version="0.1.0",
    description="Temporal-enhanced DeepEmoCluster: semi-supervised speech emotion recognition "
                "on TensorFlow/Keras 3 and Apache Beam",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["pipeline", "model"],
    py_modules=["trainer"],
    install_requires=WORKER_REQUIREMENTS,
)
