"""model.training.datasets: split datasets read back exactly what pipeline.records wrote."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from model.training import datasets
from pipeline import records
from pipeline.metadata import LabelStats, Metadata, MetadataError, SplitInfo
from pipeline.params import ATTRIBUTES, FeatureParams

PARAMS = FeatureParams(max_seconds=2.0, chunk_seconds=0.5, n_mels=16)  # C=4, m=31


def planted_features(params: FeatureParams, index: int) -> np.ndarray:
    """Mel bin 0 holds the chunk position and bin 1 the record index, so readers can check
    both; the rest varies with the index (all exact in float16)."""
    c, m, f = params.feature_shape
    features = np.full((c, m, f), (index % 7) / 8.0, np.float32)
    features[:, :, 0] = np.arange(c)[:, None]
    features[:, :, 1] = index
    return features


def planted_labels(index: int) -> np.ndarray | None:
    """Every fifth record is unlabelled."""
    return None if index % 5 == 4 else np.array([1 + (index % 61) / 10, 2.5, 7.0], np.float32)


def write_split(directory: str, split: str, indices: list[int], num_shards: int,
                params: FeatureParams = PARAMS) -> list[list[int]]:
    """Writes records with the given indices round-robin into shards; returns each shard's indices."""
    shards = [list(indices[k::num_shards]) for k in range(num_shards)]
    options = tf.io.TFRecordOptions(compression_type=records.COMPRESSION)
    for k, shard in enumerate(shards):
        path = os.path.join(directory, f"{split}-{k:05d}-of-{num_shards:05d}{records.FILE_SUFFIX}")
        with tf.io.TFRecordWriter(path, options) as writer:
            for index in shard:
                writer.write(records.encode(
                    utt_id=f"utt{index}", speaker=f"spk{index % 3}", split=split, index=index,
                    features=planted_features(params, index), labels=planted_labels(index),
                    num_frames=100 + index, params=params))
    return shards


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> tuple[str, list[list[int]]]:
    directory = str(tmp_path_factory.mktemp("records"))
    indices = [i for i in range(40) if i % 9 != 3]  # gaps, as rejected inputs leave them
    return directory, write_split(directory, "train", indices, num_shards=3)


def as_lists(dataset: tf.data.Dataset) -> list[dict]:
    return list(dataset.as_numpy_iterator())


def test_split_files_sorted_and_missing_split_is_named(split_dir):
    directory, shards = split_dir
    files = datasets.split_files(directory, "train")
    assert [os.path.basename(f) for f in files] == [
        f"train-{k:05d}-of-00003{records.FILE_SUFFIX}" for k in range(3)]
    with pytest.raises(FileNotFoundError, match="'dev'"):
        datasets.split_files(directory, "dev")


def test_unshuffled_dataset_round_trips_every_record_in_a_fixed_order(split_dir):
    directory, shards = split_dir
    elements = as_lists(datasets.split_dataset(directory, "train", PARAMS))
    order = [int(e["index"]) for e in elements]
    assert sorted(order) == sorted(i for shard in shards for i in shard)
    for shard in shards:  # each shard's records in the order written
        assert [i for i in order if i in shard] == shard
    assert order == [int(e["index"]) for e in as_lists(datasets.split_dataset(directory, "train", PARAMS))]
    for element in elements:
        index = int(element["index"])
        np.testing.assert_array_equal(element["features"], planted_features(PARAMS, index))
        assert element["features"].dtype == np.float32
        labels = planted_labels(index)
        assert bool(element["has_labels"]) == (labels is not None)
        np.testing.assert_allclose(element["labels"], np.zeros(len(ATTRIBUTES)) if labels is None else labels)
        assert element["utt_id"] == f"utt{index}".encode()
        assert element["speaker"] == f"spk{index % 3}".encode()
        assert element["split"] == b"train"
        assert element["num_frames"] == 100 + index


def test_training_keys_drop_the_string_fields(split_dir):
    directory, _ = split_dir
    dataset = datasets.split_dataset(directory, "train", PARAMS, keys=datasets.TRAINING_KEYS)
    assert set(dataset.element_spec) == {"features", "labels", "has_labels", "index"}
    assert dataset.element_spec["features"].shape == PARAMS.feature_shape


def test_shuffled_dataset_is_a_seeded_permutation_and_repeats(split_dir):
    directory, shards = split_dir
    everything = sorted(i for shard in shards for i in shard)

    def order(seed: int, repeat: bool = False, take: int = -1) -> list[int]:
        dataset = datasets.split_dataset(directory, "train", PARAMS, shuffle=True, seed=seed, repeat=repeat,
                                     keys=("index",)).take(take)
        return [int(e["index"]) for e in as_lists(dataset)]

    first = order(seed=7)
    assert sorted(first) == everything
    assert first == order(seed=7)
    assert first != order(seed=8)
    assert first != [int(e["index"]) for e in as_lists(datasets.split_dataset(directory, "train", PARAMS))]
    n = len(everything)
    twice = order(seed=7, repeat=True, take=2 * n)
    assert sorted(twice[:n]) == sorted(twice[n:]) == everything  # each pass a whole permutation
    assert twice[:n] != twice[n:]


def test_parse_index_agrees_with_the_full_parse(split_dir):
    directory, _ = split_dir
    serialized = datasets.serialized_records(datasets.split_files(directory, "train"))
    for record in serialized.take(5):
        assert int(datasets.parse_index(record)) == int(records.parse(record, PARAMS)["index"])


def test_inference_batches_keep_the_last_partial_batch(split_dir):
    directory, shards = split_dir
    count = sum(len(shard) for shard in shards)
    batches = as_lists(datasets.inference_batches(directory, "train", PARAMS, batch_size=8))
    assert [len(b["index"]) for b in batches] == [8] * (count // 8) + [count % 8]
    assert batches[0]["features"].shape == (8, *PARAMS.feature_shape)
    assert batches[0]["labels"].shape == (8, len(ATTRIBUTES))
    flat = [int(i) for b in batches for i in b["index"]]
    assert flat == [int(e["index"]) for e in as_lists(datasets.split_dataset(directory, "train", PARAMS))]


def test_split_source_reads_counts_from_metadata(split_dir):
    directory, shards = split_dir
    n_mels = PARAMS.n_mels
    metadata = Metadata(
        params=PARAMS, feature_mean=np.zeros(n_mels), feature_std=np.ones(n_mels),
        label_stats=LabelStats({a: 4.0 for a in ATTRIBUTES}, {a: 1.0 for a in ATTRIBUTES}),
        splits={"train": SplitInfo(count=sum(map(len, shards)), index_size=40, rejected=5)},
        error_count=5)
    source = datasets.SplitSource.from_metadata(directory, "train", metadata)
    assert (source.count, source.index_size, source.params) == (35, 40, PARAMS)
    assert source.files() == datasets.split_files(directory, "train")
    with pytest.raises(MetadataError, match="'test1'"):
        datasets.SplitSource.from_metadata(directory, "test1", metadata)
