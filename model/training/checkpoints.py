"""Stable names for the variables a training checkpoint holds (issue 17).

A checkpoint keyed by position restores the wrong weights, silently when shapes agree,
as soon as variables are created or listed in another order (a Keras upgrade, a
refactored layer). Keras' own variable paths do not help: layer and ``SeedGenerator``
names are numbered per process (``dense_3``, ``seed_generator_7``), and TensorFlow's
object graph names a Keras variable by its position in the optimizer's lists. So each
variable is named here by the attributes that lead to it from the network
(``encoder/blocks/0/0/_kernel``: the first conv of the first block), and each optimizer slot by its optimizer, its slot
list and the network variable it belongs to (``adam/_momentums/encoder/dense/_kernel``).
Attribute names are code, not counters: the same in every process and in every rebuild
within one, and a renamed attribute is a missing name that ``restore_checkpoint``
refuses rather than a misplaced value.
"""

from __future__ import annotations

import functools
import posixpath
import re
from typing import Any, Iterator, Mapping

import keras
import tensorflow as tf

from model.tf_paths import readable_checkpoint
from pipeline.paths import literal_pattern

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
"""How a tf.train.Checkpoint key ends for a variable's value."""
POSITIONAL_NAME = re.compile(r"v\d{4}")
"""How checkpoints written before these names keyed a variable: by its index."""


@functools.cache
def _bookkeeping() -> frozenset[str]:
    """Attributes every Keras layer or model has: lists of its own variables and sublayers,
    call nodes, compile state. They alias what the walk finds under a layer's own
    attribute names, so they are never part of a name."""
    return frozenset(vars(keras.layers.Layer())) | frozenset(vars(keras.Model()))


def network_variables(net: keras.Layer) -> dict[str, keras.Variable]:
    """Every variable of ``net`` (``SeedGenerator`` states included) by attribute path.

    Raises ValueError when a variable of ``net.variables`` is reachable by no attribute:
    it would otherwise be left out of every checkpoint.
    """
    named: dict[str, keras.Variable] = {}
    seen: set[int] = set()
    for name, variable in _walk(net, "", seen):
        if id(variable) not in seen:
            seen.add(id(variable))
            named[name] = variable
    unnamed = [v.path for v in net.variables if id(v) not in seen]
    if unnamed:
        raise ValueError(f"{net.name}: no attribute leads to the variables {unnamed[:5]}; "
                         f"a checkpoint could not name them")
    return named


def _walk(value: Any, path: str, seen: set[int]) -> Iterator[tuple[str, keras.Variable]]:
    if isinstance(value, keras.Variable):
        yield path, value
        return
    if isinstance(value, keras.random.SeedGenerator):
        yield from _walk(value.state, path, seen)
        return
    if isinstance(value, (list, tuple)):
        children = enumerate(value)
    elif isinstance(value, dict):
        children = sorted(value.items())
    elif isinstance(value, keras.Layer):
        if id(value) in seen:  # a layer that another attribute also holds: named once
            return
        seen.add(id(value))
        children = ((k, v) for k, v in sorted(vars(value).items())
                    if k not in _bookkeeping() and not k.startswith("_self_"))
    else:
        return
    for key, child in children:
        yield from _walk(child, f"{path}/{key}" if path else str(key), seen)


def optimizer_variables(optimizers: Mapping[str, keras.optimizers.Optimizer],
                        net_names: Mapping[str, keras.Variable]) -> dict[str, keras.Variable]:
    """Every variable of each optimizer: its own (``_iterations``, ``_learning_rate``) by
    attribute, and each slot (``_momentums``, ``_velocities``...) by the name of the network
    variable it belongs to, never by its index in the optimizer's lists."""
    names_of = {id(v): name for name, v in net_names.items()}
    named: dict[str, keras.Variable] = {}
    for group, optimizer in optimizers.items():
        references = list(optimizer._trainable_variables)
        for attribute, value in sorted(vars(optimizer).items()):
            if attribute in ("_variables", "_trainable_variables"):
                continue
            if isinstance(value, keras.Variable):
                named[f"{group}/{attribute}"] = value
            elif _is_slot_list(value, references):
                for reference, slot in zip(references, value):
                    if id(reference) not in names_of:
                        raise ValueError(f"optimizer {group} steps {reference.path}, which is not a "
                                         f"variable of the network")
                    named[f"{group}/{attribute}/{names_of[id(reference)]}"] = slot
        found = {id(v) for v in named.values()}
        unnamed = [v.path for v in optimizer.variables if id(v) not in found]
        if unnamed:
            raise ValueError(f"optimizer {group}: no attribute leads to the variables {unnamed[:5]}; "
                             f"a checkpoint could not name them")
    return named


def _is_slot_list(value: Any, references: list) -> bool:
    """One variable per stepped weight, shaped like it: Keras' per-weight optimizer state."""
    return (isinstance(value, (list, tuple)) and len(value) == len(references) > 0
            and all(isinstance(slot, keras.Variable) and tuple(slot.shape) == tuple(ref.shape)
                    for slot, ref in zip(value, references)))


class _Node(tf.__internal__.tracking.AutoTrackable):
    """One level of names in a checkpoint: each child under its key, never an attribute."""

    def __init__(self, children: Mapping[str, Any]) -> None:
        for key, child in children.items():
            self._track_trackable(child if isinstance(child, tf.__internal__.tracking.Trackable) else _Node(child),
                                  name=key)


class NamedVariables(_Node):
    """Variables as one checkpoint child, each under its name (``/`` nests), with the
    names kept so a restore can say which are missing, extra or mis-shaped."""

    def __init__(self, variables: Mapping[str, tf.Variable]) -> None:
        tree: dict[str, Any] = {}
        for name, variable in variables.items():
            *parents, leaf = name.split("/")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = variable
        super().__init__(tree)
        self._remember(dict(variables))

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _remember(self, variables: dict[str, tf.Variable]) -> None:
        self.named = variables

    def mismatches(self, saved: Mapping[str, list[int]]) -> list[str]:
        """What differs between these variables and ``saved`` (name -> shape in a file)."""
        expected = {name: list(v.shape) for name, v in self.named.items()}
        problems = []
        missing = sorted(set(expected) - set(saved))
        extra = sorted(set(saved) - set(expected))
        shaped = sorted(n for n in set(expected) & set(saved) if expected[n] != saved[n])
        if missing:
            problems.append(f"missing {_some(missing)}")
        if extra:
            problems.append(f"not in this network {_some(extra)}")
        if shaped:
            problems.append("other shapes: " + ", ".join(f"{n} {saved[n]} (here {expected[n]})"
                                                         for n in shaped[:5]))
        return problems


def saved_names(shapes: Mapping[str, list[int]], child: str) -> dict[str, list[int]]:
    """The names under checkpoint child ``child`` with their shapes, from a reader's
    ``get_variable_to_shape_map`` (TensorFlow escapes ``.`` and ``/`` within a name)."""
    prefix = child + "/"
    return {"/".join(_unescape(part) for part in key[len(prefix):-len(VALUE_SUFFIX)].split("/")): shape
            for key, shape in shapes.items() if key.startswith(prefix) and key.endswith(VALUE_SUFFIX)}


def _unescape(part: str) -> str:
    return re.sub(r"\.(.)", lambda match: "/" if match.group(1) == "S" else match.group(1), part)


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not match the network it is restored into."""


def training_checkpoint(**children: Any) -> tf.train.Checkpoint:
    """A root checkpoint whose ``save_counter`` exists before it is written: ``restore``
    creates it otherwise, and then it is the one unmatched object ``restore_checkpoint``'s
    strict check finds."""
    checkpoint = tf.train.Checkpoint(**children)
    checkpoint.save_counter  # noqa: B018 (creates the variable)
    return checkpoint


def network_checkpoint(net: keras.Layer, optimizers: Mapping[str, keras.optimizers.Optimizer] | None = None,
                       **children: Any) -> tf.train.Checkpoint:
    """``net``'s variables (child ``net``) and those of its ``optimizers`` (``optimizers``)
    under their names, with any other ``children``."""
    names = network_variables(net)
    if optimizers is not None:
        children["optimizers"] = NamedVariables(optimizer_variables(optimizers, names))
    return training_checkpoint(net=NamedVariables(names), **children)


def restore_checkpoint(checkpoint: tf.train.Checkpoint, prefix: str, partial: bool = False) -> None:
    """Restores ``prefix`` into ``checkpoint``, or raises CheckpointError saying why.

    Variables are matched by name: every ``NamedVariables`` child must find exactly its
    names, with their shapes, in the file, so a checkpoint of another architecture or Keras
    version is refused naming what differs, rather than leaving weights at their initial
    values or in each other's places. Unless ``partial``, every other value in the file
    must find its object too.
    """
    with readable_checkpoint(prefix) as readable:
        _restore(checkpoint, readable, prefix, partial)


def _restore(checkpoint: tf.train.Checkpoint, readable: str, prefix: str, partial: bool) -> None:
    try:
        # The reader takes the prefix itself: list_variables would treat a ram:// or gs://
        # prefix that looks like a folder as one and look for a 'checkpoint' file in it.
        shapes = tf.compat.v1.train.NewCheckpointReader(readable).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        raise CheckpointError(f"checkpoint {prefix} cannot be read: {_first_line(error)}") from error
    problems = []
    for child, named in vars(checkpoint).items():
        if isinstance(named, NamedVariables):
            saved = saved_names(shapes, child)
            if saved and all(POSITIONAL_NAME.fullmatch(name) for name in saved):
                raise CheckpointError(f"checkpoint {prefix} keeps its variables by position (written before "
                                      f"checkpoints named them); it cannot be restored by name: train again "
                                      f"into a new --job-dir")
            problems.extend(f"{child}: {problem}" for problem in named.mismatches(saved))
    if problems:
        raise CheckpointError(f"checkpoint {prefix} does not match this network (another architecture or "
                              f"Keras version?): {'; '.join(problems)}")
    try:
        status = checkpoint.restore(readable)
    except (ValueError, tf.errors.OpError) as error:  # a variable of another shape or dtype
        raise CheckpointError(f"checkpoint {prefix} does not match this network: {_first_line(error)}") from error
    status.expect_partial()  # no warnings at exit: a mismatch is raised here instead
    try:
        status.assert_existing_objects_matched() if partial else status.assert_consumed()
    except AssertionError as error:
        raise CheckpointError(f"checkpoint {prefix} does not match this network (another architecture or "
                              f"Keras version?): {_first_line(error)[:500]}") from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def checkpoint_in(checkpoint_dir: str, prefix: str) -> str:
    """A saved prefix's file name inside ``checkpoint_dir`` (the job may have moved)."""
    return posixpath.join(checkpoint_dir, posixpath.basename(prefix))


def remove_checkpoint(prefix: str) -> None:
    for path in tf.io.gfile.glob(literal_pattern(prefix) + ".*"):  # a job folder named run[2] is no pattern
        tf.io.gfile.remove(path)
