"""``python -m model.convert_reference SOURCE --output DIR``: the authors' released models as SavedModels.

    python -m model.convert_reference SOURCE --output DIR [--commit SHA] [--golden GOLDEN]

SOURCE is laid out like either of the authors' repositories (``trained_models/`` with one
legacy ``torch.save`` file per attribute, ``NormTerm/*.mat`` and ``LICENSE``). Every
release found there (Temp-CNN and Temp-Triplet from Temporal-Enhanced-DeepEmoCluster,
vanilla DeepEmoCluster from DeepEmoClusters) becomes ``DIR/<release>/``: one SavedModel
answering all three attributes (a network per attribute inside, as the authors trained
them) with our serving contract (``model.serving.export``), a ``MODEL_CARD.md`` and the authors'
``LICENSE``. Checkpoints are read with ``model.serving.torch_legacy`` (no torch, no pickle code
run); every state-dict entry must land in a variable of ours and vice versa.

Every SavedModel is loaded back and checked as ``model.serving.export`` checks a trained one;
with ``--golden`` (a folder of ``features.npz``, ``reference_outputs.npz`` and
``audio/``, computed with the authors' code) it is also checked against the authors'
outputs: scores on their features within 1e-4, scores from the audio within 1e-3.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from model.serving import torch_legacy
from model.nets.variants import VARIANTS
from pipeline.params import ATTRIBUTES, FeatureParams

if TYPE_CHECKING:  # TensorFlow (through these) where used, so that --help answers at once
    from model.nets.emocluster_net import EmoClusterNet
    from pipeline.metadata import LabelStats, Metadata
    from pipeline.probe_file import Probe

ATTRIBUTE_CODES: dict[str, str] = {"arousal": "Act", "valence": "Val", "dominance": "Dom"}
"""How the authors' file names spell each attribute."""
WAVEFORM_TOLERANCE = 1e-3
"""Scores from the golden audio against the authors' (their librosa features vs our in-graph front end)."""
RELEASE_FILE = "release.json"
SKIPPED_KEYS = ("num_batches_tracked",)
"""State-dict entries with no counterpart: BatchNorm's step counter (unused with a fixed momentum)."""


class ConversionError(ValueError):
    """SOURCE does not hold what a release needs, or a checkpoint does not fit our network."""


@dataclasses.dataclass(frozen=True)
class ReleaseSpec:
    """One of the authors' releases: which files, which of our variants, what they report."""

    name: str
    variant: str
    pattern: str
    """Checkpoint glob under ``trained_models/``, ``{code}`` standing for Act/Val/Dom."""
    repository: str
    commit: str
    corpus: str
    reported_ccc: Mapping[str, float]
    reported_where: str


RELEASES: tuple[ReleaseSpec, ...] = (
    ReleaseSpec("msp-podcast-v1.8-temp-cnn", "temp-cnn",
                "TempDeepEmoCluster_epoch*_batch*_*clusters_{code}_Temp-CNN.pth.tar",
                "winston-lin-wei-cheng/Temporal-Enhanced-DeepEmoCluster", "4342e7b3aba7d69c6b2298b20d7fe80a60fc6fb6",
                "MSP-Podcast v1.8", {"arousal": 0.5589, "valence": 0.1514, "dominance": 0.4705},
                "paper Table 2: five-trial means on the v1.8 test set; the shipped files are one trial"),
    ReleaseSpec("msp-podcast-v1.8-temp-triplet", "temp-triplet",
                "TempDeepEmoCluster_epoch*_batch*_*clusters_{code}_Temp-Triplet.pth.tar",
                "winston-lin-wei-cheng/Temporal-Enhanced-DeepEmoCluster", "4342e7b3aba7d69c6b2298b20d7fe80a60fc6fb6",
                "MSP-Podcast v1.8", {"arousal": 0.5515, "valence": 0.1508, "dominance": 0.4701},
                "paper Table 2: five-trial means on the v1.8 test set; the shipped files are one trial"),
    ReleaseSpec("msp-podcast-v1.6-vanilla", "vanilla",
                "Vgg16DeepEmoCluster_epoch*_batch*_*clusters_{code}.pth.tar",
                "winston-lin-wei-cheng/DeepEmoClusters", "f5d19c50de17b274c4d0f805745124d0f520b270",
                "MSP-Podcast v1.6", {"arousal": 0.6732, "valence": 0.1902, "dominance": 0.5547},
                "DeepEmoClusters README, these files on the v1.6 test set"),
)


def read_normterm(source: str) -> tuple[np.ndarray, np.ndarray, LabelStats]:
    """``NormTerm/*.mat``: feature mean/std [128] and the label statistics (MATLAB v5, not pickle)."""
    import scipy.io

    from pipeline.metadata import LabelStats

    def value(name: str) -> np.ndarray:
        path = os.path.join(source, "NormTerm", f"{name}.mat")
        if not os.path.exists(path):
            raise ConversionError(f"{path} is missing")
        return np.asarray(scipy.io.loadmat(path)["normal_para"], np.float64).ravel()

    mean, std = value("feat_norm_means"), value("feat_norm_stds")
    labels = {a: (float(value(f"{c.lower()}_norm_means")[0]), float(value(f"{c.lower()}_norm_stds")[0]))
              for a, c in ATTRIBUTE_CODES.items()}
    return mean, std, LabelStats({a: m for a, (m, _) in labels.items()}, {a: s for a, (_, s) in labels.items()})


def checkpoint_paths(source: str, spec: ReleaseSpec) -> dict[str, str] | None:
    """Attribute -> checkpoint file of ``spec`` in ``source``; None when the release is absent."""
    found = {a: sorted(glob.glob(os.path.join(source, "trained_models", spec.pattern.format(code=c))))
             for a, c in ATTRIBUTE_CODES.items()}
    if not any(found.values()):
        return None
    for attribute, paths in found.items():
        if len(paths) != 1:
            raise ConversionError(f"{spec.name}: expected one {attribute} checkpoint matching "
                                  f"{spec.pattern.format(code=ATTRIBUTE_CODES[attribute])}, found {len(paths)}")
    return {a: paths[0] for a, paths in found.items()}


def net_from_state_dict(state_dict: Mapping[str, np.ndarray], variant: str,
                        params: FeatureParams = FeatureParams()) -> EmoClusterNet:
    """Our network of ``variant`` holding a reference checkpoint's weights, every entry accounted for."""
    from model.nets.emocluster_net import EmoClusterNet

    spec = VARIANTS[variant]
    top = state_dict.get("top_layer_class.weight")
    if top is None:
        raise ConversionError("the checkpoint has no top_layer_class: not a DeepEmoCluster model")
    net = EmoClusterNet.for_params(params, temporal=spec.temporal, num_clusters=int(top.shape[0]),
                                   num_attributes=1, encoder_dropout=spec.encoder_dropout)
    assignments = reference_variables(net)
    unused = sorted(k for k in state_dict if k not in assignments and not k.endswith(SKIPPED_KEYS))
    missing = sorted(k for k in assignments if k not in state_dict)
    if unused or missing:
        raise ConversionError(f"the checkpoint does not fit our {variant} network: unused {unused}, missing {missing}")
    for key, (variable, to_ours) in assignments.items():
        value = to_ours(np.asarray(state_dict[key], np.float32))
        if tuple(value.shape) != tuple(variable.shape):
            raise ConversionError(f"{key}: shape {value.shape} after conversion, our variable {variable.shape}")
        variable.assign(value)
    return net


def reference_variables(net: EmoClusterNet) -> dict[str, tuple[Any, Any]]:
    """Reference state-dict key -> (our variable, conversion of the reference array to our layout).

    Conv weights [out, in, kh, kw] -> [kh, kw, in, out]; Linear [out, in] -> [in, out];
    the first Linear reads the NCHW flatten of the last conv map, our Dense the NHWC one,
    so its rows are permuted.
    """
    from model.nets.encoder import CONV_STRIDES

    def conv(w: np.ndarray) -> np.ndarray:
        return w.transpose(2, 3, 1, 0)

    def linear(w: np.ndarray) -> np.ndarray:
        return w.T

    height, width = net.chunk_frames, net.n_mels
    for stride in CONV_STRIDES:
        height, width = -(-height // stride), -(-width // stride)
    channels = net.encoder.blocks[-1][0].filters

    def nchw_linear(w: np.ndarray) -> np.ndarray:
        rows = w.T.reshape(channels, height, width, -1)
        return rows.transpose(1, 2, 0, 3).reshape(height * width * channels, -1)

    def same(w: np.ndarray) -> np.ndarray:
        return w

    out: dict[str, tuple[Any, Any]] = {}

    def conv_block(prefix: str, conv_index: int, layer_pair: tuple[Any, Any]) -> None:
        conv_layer, norm = layer_pair
        out[f"{prefix}.{conv_index}.weight"] = (conv_layer.kernel, conv)
        out[f"{prefix}.{conv_index}.bias"] = (conv_layer.bias, same)
        for key, variable in (("weight", norm.gamma), ("bias", norm.beta), ("running_mean", norm.moving_mean),
                              ("running_var", norm.moving_variance)):
            out[f"{prefix}.{conv_index + 1}.{key}"] = (variable, same)

    def dense(key: str, layer: Any, kernel: Any = linear) -> None:
        out[f"{key}.weight"] = (layer.kernel, kernel)
        out[f"{key}.bias"] = (layer.bias, same)

    for i, block in enumerate(net.encoder.blocks):
        conv_block("cnn_features.module", 3 * i, block)
    dense("cnn_out.module.0", net.encoder.dense, nchw_linear)
    if net.temporal_kind == "cnn":
        for i, block in enumerate(net.temporal.blocks):
            conv_block("temporal_net", 3 * i, block)
    elif net.temporal_kind != "none":
        raise ConversionError(f"no reference release has a {net.temporal_kind} temporal net")
    dense("classifier.0", net.cluster_head.hidden)
    dense("top_layer_class", net.cluster_head.classifier)
    dense("emo_regressor.0", net.emotion_head.hidden)
    dense("top_layer_attri", net.emotion_head.output_layer)
    return out


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_release(source: str, spec: ReleaseSpec, paths: Mapping[str, str], output: str,
                    commit: str | None = None, golden: str | None = None) -> dict[str, Any]:
    """Writes ``output`` (SavedModel, MODEL_CARD.md, LICENSE), verified; returns the check's figures."""
    import tensorflow as tf

    from model.serving.export import verify_saved_model, write_saved_model
    from model.serving.release_serving import ReleaseServing
    from pipeline.metadata import Metadata

    feature_mean, feature_std, label_stats = read_normterm(source)
    params = FeatureParams()
    hashes = {os.path.relpath(p, source): file_sha256(p) for p in (
        *paths.values(), *sorted(glob.glob(os.path.join(source, "NormTerm", "*.mat"))))}
    nets, clusters = {}, {}
    for attribute, path in paths.items():
        nets[attribute] = net_from_state_dict(torch_legacy.load(path)["state_dict"], spec.variant, params)
        clusters[attribute] = nets[attribute].num_clusters
    release = {"name": spec.name, "variant": spec.variant, "num_clusters": clusters,
               "repository": spec.repository, "commit": commit or spec.commit, "corpus": spec.corpus,
               "files_sha256": hashes}
    metadata = Metadata(params=params, feature_mean=feature_mean, feature_std=feature_std, label_stats=label_stats,
                        splits={}, error_count=0, source={"release": release})
    module = ReleaseServing(nets, metadata)
    if os.path.exists(output):
        shutil.rmtree(output)
    write_saved_model(module, output)
    with open(os.path.join(output, RELEASE_FILE), "w") as handle:
        json.dump(release, handle, indent=2)
    probes = golden_probes(golden, spec) if golden else []
    rng = np.random.default_rng(0)
    record_features = np.clip(rng.standard_normal((2, *params.feature_shape)), -3, 3).astype(np.float32)
    figures = verify_saved_model(output, module, record_features, probes)
    if golden:
        figures.update(golden_errors(tf.saved_model.load(output), golden, spec, paths))
    license_path = os.path.join(source, "LICENSE")
    if os.path.exists(license_path):
        shutil.copyfile(license_path, os.path.join(output, "LICENSE"))
    with open(os.path.join(output, "MODEL_CARD.md"), "w") as handle:
        handle.write(model_card(spec, release, figures))
    return figures


def golden_features_group(spec: ReleaseSpec) -> str:
    """``features.npz`` holds each repository's features under its own group."""
    return "vanilla" if spec.variant == "vanilla" else "temporal"


def golden_probes(golden: str, spec: ReleaseSpec) -> list[Probe]:
    """The golden utterances as probes: the authors' features are what ``serve_waveform`` must give."""
    from pipeline.audio_decoding import decode_audio
    from pipeline.probe_file import Probe

    features = np.load(os.path.join(golden, "features.npz"))
    group = golden_features_group(spec)
    probes = []
    for index, path in enumerate(sorted(glob.glob(os.path.join(golden, "audio", "*.wav")))):
        utt = os.path.splitext(os.path.basename(path))[0]
        with open(path, "rb") as handle:
            waveform = decode_audio(handle.read(), FeatureParams().sample_rate)
        probes.append(Probe(utt, "golden", index, waveform, features[f"{group}/{utt}/chunks"]))
    return probes


def golden_errors(loaded: Any, golden: str, spec: ReleaseSpec, paths: Mapping[str, str]) -> dict[str, float]:
    """Largest differences from the authors' outputs on their inputs; ExportError past the tolerances.

    ``score_error`` and ``output_error`` (every output, normalised scale) on the authors'
    features through ``serving_default`` and ``chunk_outputs``; ``waveform_score_error``
    from the audio through ``serve_waveform``.
    """
    import tensorflow as tf

    from model.serving.export import PREDICTION_TOLERANCE, ExportError

    features = np.load(os.path.join(golden, "features.npz"))
    reference = np.load(os.path.join(golden, "reference_outputs.npz"))
    group = golden_features_group(spec)
    inputs = {"random": features["random/chunks"],
              **{k.split("/")[1]: features[k][np.newaxis] for k in features.files
                 if k.startswith(f"{group}/") and k.endswith("/chunks")}}
    score_error = output_error = waveform_error = 0.0
    for name, batch in sorted(inputs.items()):
        served = loaded.signatures["serving_default"](features=tf.constant(batch))
        chunks = loaded.chunk_outputs(tf.constant(batch))
        for attribute, path in paths.items():
            prefix = f"{os.path.basename(path)[:-len('.pth.tar')]}/{name}"
            score_error = max(score_error, _difference(served[attribute], reference[f"{prefix}/score"]))
            for key in ("embeddings", "cluster_logits", "chunk_predictions"):
                ours = chunks[f"{attribute}_{key}"].numpy()
                output_error = max(output_error, _difference(ours.reshape(-1, ours.shape[-1]),
                                                             reference[f"{prefix}/{key}"]))
            normalised = chunks[f"{attribute}_chunk_predictions"].numpy().mean(axis=1)[:, 0]
            output_error = max(output_error, _difference(normalised,
                                                         reference[f"{prefix}/sentence_prediction_normalised"]))
    for probe in golden_probes(golden, spec):
        served = loaded.signatures["serve_waveform"](waveform=tf.constant(probe.waveform))
        for attribute, path in paths.items():
            key = f"{os.path.basename(path)[:-len('.pth.tar')]}/{probe.utt_id}/score"
            waveform_error = max(waveform_error, _difference(served[attribute], reference[key]))
    if not score_error <= PREDICTION_TOLERANCE or not waveform_error <= WAVEFORM_TOLERANCE:
        raise ExportError(f"{spec.name} departs from the authors' outputs: scores by {score_error:.3g} "
                          f"(tolerance {PREDICTION_TOLERANCE:g}), from audio by {waveform_error:.3g} "
                          f"(tolerance {WAVEFORM_TOLERANCE:g})")
    return {"golden_score_error": score_error, "golden_output_error": output_error,
            "golden_waveform_score_error": waveform_error}


def _difference(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def model_card(spec: ReleaseSpec, release: Mapping[str, Any], figures: Mapping[str, float]) -> str:
    """MODEL_CARD.md: provenance, reported figures, the checks that passed, intended use and limits."""
    ccc = " / ".join(f"{spec.reported_ccc[a]:.4f}" for a in ATTRIBUTES)
    clusters = ", ".join(f"{a} {release['num_clusters'][a]}" for a in ATTRIBUTES)
    files = "\n".join(f"| `{path}` | `{digest}` |" for path, digest in release["files_sha256"].items())
    checks = "\n".join(f"- `{key}`: {value:.3g}" if isinstance(value, float) else f"- `{key}`: {value}"
                       for key, value in figures.items())
    variant = VARIANTS[spec.variant]
    return f"""# {spec.name}

The authors' trained {variant.paper_name} networks (one per attribute: arousal, valence,
dominance), converted to a TensorFlow SavedModel by `python -m model.convert_reference`.
Weights and normalisation statistics are theirs, unchanged; the MIT license beside this
file is theirs.

## Source
- Repository: https://github.com/{release['repository']} at commit `{release['commit']}`.
- Corpus: {release['corpus']} (training split for the weights and for the feature and label statistics).
- Clusters Q per network: {clusters}.

| file | sha256 |
|---|---|
{files}

## Reported performance
CCC arousal / valence / dominance: {ccc} ({spec.reported_where}).

## Use
```python
import tensorflow as tf
model = tf.saved_model.load("{spec.name}")
scores = model.signatures["serve_waveform"](waveform=tf.constant(waveform_16k_mono_float32))
```
`scores["arousal"]`, `scores["valence"]`, `scores["dominance"]` are [1] on the 1..7 scale;
`<attribute>_chunks` the 11 chunk-level scores. `serving_default` takes features
[batch, 11, 62, 128], what the restored function `waveform_features` computes. For folders of files:
`python -m model.predict --model {spec.name} AUDIO_DIR --output predictions.csv`.

## Intended use and limits
- English podcast speech (MSP-Podcast), 16 kHz, one speaker per clip, about 1 to 11 s
  (longer clips are covered by 11 evenly spaced 1-s chunks; shorter than 1 s are tiled).
- Valence is weakly predicted from acoustics alone (CCC about 0.15 to 0.19): do not use
  it for decisions about individuals. Arousal is the most reliable attribute.
- Not evaluated on other languages, recording conditions, acted or clinical speech;
  scores are relative to MSP-Podcast annotators' perception, not a person's inner state.

## Verified at conversion
Largest absolute differences: the SavedModel against the converted networks in memory
(`max_abs_difference`, `probe_prediction_difference`); `serve_waveform` features against
the authors' features of the golden audio (`probe_feature_difference`); against the
authors' own outputs (`golden_*`: scores on their features, every network output, and
scores from the audio).

{checks}
"""


def convert(source: str, output: str, commit: str | None = None, golden: str | None = None,
            log: Any = print) -> dict[str, dict[str, Any]]:
    """Converts every release found in ``source``; returns each release's check figures."""
    if not os.path.isdir(os.path.join(source, "trained_models")):
        raise ConversionError(f"{source} has no trained_models/ folder (expected a copy of the authors' repository)")
    results = {}
    for spec in RELEASES:
        paths = checkpoint_paths(source, spec)
        if paths is None:
            continue
        results[spec.name] = convert_release(source, spec, paths, os.path.join(output, spec.name), commit, golden)
        log(f"{spec.name}: {json.dumps(results[spec.name])}")
    if not results:
        raise ConversionError(f"no release found in {source}/trained_models")
    return results


def check_init_from(release_dir: str, params: FeatureParams, temporal: str, clustering: bool,
                    attributes: Sequence[str]) -> dict[str, Any]:
    """The release's record if a model of ``temporal`` on ``attributes`` can start from it.

    Feature settings must equal the release's (the storage dtype and minimum length
    aside, which do not change features), the model must have the release's temporal
    net and a cluster head, and train one attribute (the release has one network each).
    """
    metadata = _release_metadata(release_dir)
    release = dict(metadata.source.get("release", {}))
    ignored = {"storage_dtype", "min_seconds"}
    ours, theirs = params.to_dict(), metadata.params.to_dict()
    differ = [f"{k}: data {ours[k]!r}, release {theirs[k]!r}"
              for k in ours if k not in ignored and ours[k] != theirs[k]]
    if differ:
        raise ConversionError(f"--init-from {release_dir}: the data's feature settings differ from the release's "
                              f"({'; '.join(differ)}); re-run the pipeline with the release's settings")
    variant = VARIANTS.get(release.get("variant", ""))
    if variant is None or variant.temporal != temporal or not clustering:
        raise ConversionError(f"--init-from {release_dir}: a {release.get('variant')!r} release needs a clustering "
                              f"model with its temporal net ({variant.temporal if variant else '?'}), e.g. "
                              f"--model {release.get('variant')}")
    if len(attributes) != 1 or attributes[0] not in release.get("num_clusters", {}):
        raise ConversionError(f"--init-from needs one attribute per model (--attributes "
                              f"{'|'.join(release.get('num_clusters', ATTRIBUTES))}), got {list(attributes)}")
    return release


def load_release_weights(net: EmoClusterNet, release_dir: str, attribute: str, params: FeatureParams) -> None:
    """Copies a converted release's ``attribute`` network into ``net``: fine-tuning starts there.

    The cluster classifier is copied only when Q matches (the trainer re-creates it
    at every clustering anyway); everything else must fit (``check_init_from``).
    """
    import tensorflow as tf

    release = check_init_from(release_dir, params, net.temporal_kind, net.cluster_head is not None, [attribute])
    if net.num_attributes != 1:
        raise ConversionError("--init-from needs a single-attribute network")
    saved = tf.saved_model.load(release_dir).net.weights[attribute]
    head = net.cluster_head
    targets = {"encoder": net.encoder, "temporal": net.temporal, "cluster_hidden": head.hidden,
               "emotion_head": net.emotion_head}
    if head.num_clusters == release["num_clusters"][attribute]:
        targets["cluster_classifier"] = head.classifier
    for part, layer in targets.items():
        values = getattr(saved, part)
        for i, variable in enumerate(layer.weights):
            variable.assign(getattr(values, f"v{i:04d}"))


def _release_metadata(release_dir: str) -> Metadata:
    from pipeline.metadata import Metadata

    path = os.path.join(release_dir, "assets.extra", "metadata.json")
    if not os.path.exists(path):
        raise ConversionError(f"--init-from {release_dir}: not a converted release (no assets.extra/metadata.json)")
    with open(path) as handle:
        return Metadata.from_json(handle.read())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.convert_reference", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a copy of the authors' repository (trained_models/, NormTerm/, LICENSE)")
    parser.add_argument("--output", required=True, help="folder to write one SavedModel folder per release into")
    parser.add_argument("--commit", help="the source repository's commit, for the model card "
                                         "(default: the commit the releases were published at)")
    parser.add_argument("--golden", help="folder of the authors' golden inputs and outputs to check against")
    args = parser.parse_args(argv)
    from model.serving.export import ExportError  # TensorFlow, after --help has answered

    try:
        convert(args.source, args.output, args.commit, args.golden)
    except (ConversionError, ExportError, torch_legacy.UnsafeCheckpointError,
            torch_legacy.CheckpointFormatError) as error:
        print(f"convert_reference: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
