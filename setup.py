"""Kept for Beam's ``--setup_file ./setup.py`` (Dataflow workers install the project's sdist);
the metadata, dependencies and console scripts live in pyproject.toml."""

import setuptools

setuptools.setup()
