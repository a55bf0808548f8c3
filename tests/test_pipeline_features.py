"""Feature front end, chunk geometry, statistics and decoding: the pipeline's pure parts."""

import io
import itertools
import struct

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile

from pipeline.audio_decoding import AudioError, decode_audio
from pipeline.corpus import Utterance, split_name
from pipeline.numpy_frontend import chunk_frames, chunk_starts, mel_filterbank, mel_spectrogram, peak_normalise
from pipeline.params import FeatureParams
from pipeline.stats import MeanStdFn
from tests.fixtures.edge_audio import speech_like

SMALL = FeatureParams(max_seconds=2.0, chunk_seconds=0.5)  # C = 4 chunks of m = 31 frames


@pytest.mark.parametrize("seconds, seed", [(1.3, 3), (0.25, 1), (0.2501, 2), (13.0, 5)])
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_mel_is_bit_identical_to_librosa_called_with_the_reference_arguments(seconds, seed, pad_mode):
    waveform = peak_normalise(speech_like(seconds, seed=seed))
    ours = mel_spectrogram(waveform, FeatureParams(pad_mode=pad_mode))
    reference = librosa.feature.melspectrogram(
        y=waveform, sr=16000, n_fft=512, hop_length=256, win_length=512, window="hann", center=True,
        pad_mode=pad_mode, power=2.0, n_mels=128, fmin=0.0, fmax=8000.0, htk=False, norm="slaney").T
    assert ours.shape == (1 + waveform.size // 256, 128) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference)


def test_mel_of_silence_is_bit_identical_to_librosa():
    silence = np.zeros(4001, np.float32)
    reference = librosa.feature.melspectrogram(y=silence, sr=16000, n_fft=512, hop_length=256, pad_mode="reflect",
                                               n_mels=128, fmax=8000.0).T
    np.testing.assert_array_equal(mel_spectrogram(silence, FeatureParams()), reference)


def test_mel_matches_a_plain_numpy_stft_with_the_librosa_filterbank():
    params = FeatureParams()
    waveform = peak_normalise(speech_like(0.7, seed=4))
    padded = np.pad(waveform.astype(np.float64), 256, mode="reflect")
    starts = np.arange(0, padded.size - 512 + 1, 256)
    frames = padded[starts[:, None] + np.arange(512)] * scipy.signal.get_window("hann", 512, fftbins=True)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    expected = power @ mel_filterbank(params).T.astype(np.float64)
    np.testing.assert_allclose(mel_spectrogram(waveform, params), expected, rtol=2e-4, atol=1e-7)


def test_log_mel_is_the_log_of_the_power_mel_plus_the_offset():
    waveform = peak_normalise(speech_like(0.5, seed=5))
    linear = mel_spectrogram(waveform, FeatureParams())
    logged = mel_spectrogram(waveform, FeatureParams(log_mel=True))
    np.testing.assert_allclose(logged, np.log(linear + np.float32(1e-6)), rtol=1e-6)


def test_silence_gives_finite_features_in_both_scales():
    silence = np.zeros(8000, np.float32)
    for params in (FeatureParams(), FeatureParams(log_mel=True)):
        assert np.all(np.isfinite(mel_spectrogram(peak_normalise(silence), params)))


def _frames(num_frames: int, n_mels: int = 3) -> np.ndarray:
    """Frame t holds the value t in every bin, so a chunk shows where it was cut."""
    return np.repeat(np.arange(num_frames, dtype=np.float32)[:, None], n_mels, axis=1)


@pytest.mark.parametrize("num_frames, shift, starts", [
    (31, "floor", [0, 0, 0, 0]),          # T = m: every chunk is the whole utterance
    (101, "floor", [0, 23, 46, 69]),      # typical: step floor(70 / 3) = 23, last frame unused
    (101, "float", [0, 23, 46, 70]),      # Eq. 1 exactly: the last chunk ends on the last frame
    (300, "floor", [0, 89, 178, 267]),    # T > max_seconds (125 frames): still C chunks
    (300, "float", [0, 89, 179, 269]),
])
def test_chunk_starts_and_slices(num_frames, shift, starts):
    params = FeatureParams(max_seconds=2.0, chunk_seconds=0.5, chunk_shift=shift)
    assert (params.num_chunks, params.chunk_frames) == (4, 31)
    assert chunk_starts(num_frames, params).tolist() == starts
    chunks = chunk_frames(_frames(num_frames), params)
    assert chunks.shape == (4, 31, 3)
    for chunk, start in zip(chunks, starts):
        np.testing.assert_array_equal(chunk[:, 0], np.arange(start, start + 31))


def test_reference_geometry_with_default_settings():
    params = FeatureParams()
    assert params.feature_shape == (11, 62, 128)
    assert chunk_starts(700, params).tolist() == [i * 63 for i in range(11)]  # floor(638 / 10) = 63
    assert chunk_starts(700, FeatureParams(chunk_shift="float")).tolist() == [i * 638 // 10 for i in range(11)]


def test_shorter_than_one_chunk_repeats_the_frames():
    chunks = chunk_frames(_frames(10), SMALL)
    assert chunk_starts(10, SMALL).tolist() == [0, 0, 0, 0]
    expected = np.tile(np.arange(10), 4)[:31]
    for chunk in chunks:
        np.testing.assert_array_equal(chunk[:, 0], expected)


def test_shorter_than_one_chunk_pads_with_zeros():
    params = FeatureParams(max_seconds=2.0, chunk_seconds=0.5, short_rule="pad")
    chunks = chunk_frames(_frames(10) + 1.0, params)
    for chunk in chunks:
        np.testing.assert_array_equal(chunk[:, 0], np.concatenate([np.arange(1, 11), np.zeros(21)]))


@pytest.mark.parametrize("given, expected", [
    ("Train", "train"), ("Validation", "dev"), ("Development", "dev"), ("Test1", "test"),
    ("Test", "test"), ("Test2", "test2"), (" test2 ", "test2"), ("Test3", "test3"), ("dev", "dev"),
])
def test_split_mapping(given, expected):
    assert split_name(given) == expected


def test_mean_std_fn_equals_numpy_in_float64_whatever_the_merge_order():
    rng = np.random.default_rng(0)
    blocks = [rng.normal(1e4, 0.5, size=(n, 5)).astype(np.float32) for n in (1, 7, 40, 3, 120, 2)]
    blocks.append(rng.normal(1e4, 0.5, size=5).astype(np.float32))  # a single row [dim]
    rows = np.concatenate([np.asarray(b, np.float64).reshape(-1, 5) for b in blocks])
    fn = MeanStdFn(5)

    def accumulate(part):
        acc = fn.create_accumulator()
        for block in part:
            acc = fn.add_input(acc, block)
        return acc

    parts = [blocks[:2], blocks[2:3], [], blocks[3:6], blocks[6:]]
    for order in itertools.permutations(range(len(parts))):
        out = fn.extract_output(fn.merge_accumulators(accumulate(parts[i]) for i in order))
        assert out.count == rows.shape[0]
        np.testing.assert_allclose(out.mean, rows.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(out.std, rows.std(axis=0), rtol=1e-9)
    merged_pairwise = fn.merge_accumulators([fn.merge_accumulators([accumulate(parts[0]), accumulate(parts[4])]),
                                             fn.merge_accumulators([accumulate(parts[3]), accumulate(parts[1])])])
    np.testing.assert_allclose(fn.extract_output(merged_pairwise).std, rows.std(axis=0), rtol=1e-9)


def test_mean_std_fn_with_no_rows_is_nan():
    fn = MeanStdFn(3)
    out = fn.extract_output(fn.add_input(fn.create_accumulator(), np.zeros((0, 3))))
    assert out.count == 0 and np.all(np.isnan(out.mean)) and np.all(np.isnan(out.std))


def _wav_bytes(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, speech_like(seconds, seed=2), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_truncated_wav_is_rejected_not_silently_shortened():
    data = _wav_bytes()
    with pytest.raises(AudioError, match="^truncated audio: data chunk declares 32000 bytes"):
        decode_audio(data[: len(data) // 2], 16000)


def test_streamed_wav_with_unknown_length_header_is_accepted():
    data = bytearray(_wav_bytes())
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    at = data.find(b"data")
    data[at + 4:at + 8] = struct.pack("<I", 0xFFFFFFFF)
    assert decode_audio(bytes(data), 16000).shape == (16000,)


def test_corrupt_audio_reason_is_stable_text():
    with pytest.raises(AudioError) as caught:
        decode_audio(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(300), 16000)
    assert str(caught.value).startswith("unreadable audio: ") and " at 0x" not in str(caught.value)


def test_stereo_44k_is_mixed_down_and_resampled():
    buffer = io.BytesIO()
    soundfile.write(buffer, speech_like(0.5, 44100, seed=1, channels=2), 44100, format="WAV")
    assert decode_audio(buffer.getvalue(), 16000).shape == (8000,)


def test_utterance_json_round_trip_keeps_nan_and_missing_labels():
    labelled = Utterance("a", "/x/a.wav", "train", "7", (1.0, float("nan"), 8.0), 3)
    unlabelled = Utterance("b", "gs://bucket/b.flac", "unlabeled", "unknown", None, 0)
    back = Utterance.from_json(labelled.to_json())
    assert back.labels[0] == 1.0 and np.isnan(back.labels[1]) and back.labels[2] == 8.0
    assert back.index == 3 and back.speaker == "7"
    assert Utterance.from_json(unlabelled.to_json()) == unlabelled
