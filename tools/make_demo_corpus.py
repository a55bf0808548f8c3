"""Builds the embedded demo corpus (``data/demo``) in MSP-Podcast layout with espeak-ng.

Every utterance is real synthetic speech whose prosody is drawn from five cues (speaking
rate, pitch level, vocal effort, crescendo, intonation contour). The arousal, valence and
dominance labels are noisy linear functions of those cues (``attribute_labels``), so a
model that hears prosody can learn them and a broken one cannot. The cues are chosen to
survive the pipeline's peak normalisation: overall level is erased by ``x / max|x|``, so
vocal effort is carried by spectral tilt and loudness by a level ramp across the sentence.

Only building needs espeak-ng; the committed corpus is plain Ogg Vorbis. A rebuild with
the same ``--seed`` (and the same espeak-ng and libsndfile) reproduces every file byte
for byte.

    python tools/make_demo_corpus.py [--seed 2024] [--output data/demo]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import librosa
import numpy as np
import soundfile
from scipy import signal

SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 2.75, 11.0
LABEL_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
CUES = ("rate", "pitch", "effort", "crescendo", "contour")
VORBIS_COMPRESSION = 0.7
UTTERANCES_PER_VOICE = 20
DEFAULT_SEED = 2024


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng accent with a voice variant."""

    speaker_id: int
    accent: str
    variant: str
    gender: str
    split: str

    @property
    def espeak_name(self) -> str:
        return f"{self.accent}+{self.variant}"


def voices() -> list[Voice]:
    """16 labelled speakers (10 Train, 3 Development, 3 Test1) and 6 unlabelled-only ones.

    Each labelled speaker has its own voice variant (formants, pitch range, voice
    quality) and gets one of eight accents; genders come from the variants' espeak-ng
    definitions and are balanced in Train. British English is ``en``: espeak-ng 1.51
    ignores the variant of ``en-gb+<variant>``.
    """
    table = [
        ("en-us", "f1", "Female", "Train"), ("en", "m1", "Male", "Train"),
        ("en-gb-scotland", "f2", "Female", "Train"), ("en-029", "m2", "Male", "Train"),
        ("en-gb-x-rp", "f3", "Female", "Train"), ("en-us-nyc", "m3", "Male", "Train"),
        ("en-gb-x-gbclan", "f4", "Female", "Train"), ("en-gb-x-gbcwmd", "m4", "Male", "Train"),
        ("en", "f5", "Female", "Train"), ("en-us", "m5", "Male", "Train"),
        ("en-029", "aunty", "Female", "Development"), ("en-gb-x-rp", "m6", "Male", "Development"),
        ("en-us-nyc", "linda", "Female", "Development"),
        ("en-gb-scotland", "m7", "Male", "Test1"), ("en-gb-x-gbcwmd", "belinda", "Female", "Test1"),
        ("en-us", "Andy", "Male", "Test1"),
        ("en-gb-x-gbclan", "Andrea", "Female", "Unlabeled"), ("en", "m8", "Male", "Unlabeled"),
        ("en-029", "steph", "Female", "Unlabeled"), ("en-us-nyc", "Mike", "Male", "Unlabeled"),
        ("en-gb-x-rp", "f2", "Female", "Unlabeled"), ("en-gb-scotland", "m3", "Male", "Unlabeled"),
    ]
    return [Voice(i + 1, accent, variant, gender, split) for i, (accent, variant, gender, split) in enumerate(table)]


SUBJECTS = (
    "my sister", "the old farmer", "our neighbour", "the new teacher", "a friend of mine", "the manager",
    "my brother", "the driver", "everyone in the office", "the children", "the doctor", "her uncle",
    "the team", "the band", "my grandmother", "the reporter", "his cousin", "the committee", "the pilot",
    "the student", "the baker", "our landlord", "the captain", "the gardener", "my parents",
)
VERBS = (
    "painted", "carried", "found", "bought", "fixed", "borrowed", "cleaned", "moved", "described",
    "delivered", "forgot", "opened", "ordered", "photographed", "repaired", "sold", "wrapped",
    "measured", "noticed", "checked", "collected", "returned", "counted", "packed", "visited",
)
OBJECTS = (
    "the blue bicycle", "a box of apples", "the kitchen table", "three wooden chairs", "the broken window",
    "an old map of the city", "the garden fence", "a letter from the bank", "the small radio",
    "the train tickets", "a basket of bread", "the heavy suitcase", "the green umbrella",
    "a pile of newspapers", "the river boat", "the piano", "a bag of oranges", "the bookshelf",
    "the winter coats", "the company car", "a few paper lanterns", "the metal ladder", "the records",
)
PLACES = (
    "near the station", "behind the library", "at the market", "in the back garden", "on the second floor",
    "by the harbour", "outside the bakery", "across the bridge", "in the village hall",
    "at the end of the street", "next to the museum", "under the old oak tree", "in the car park",
    "along the canal", "at the corner shop", "inside the school", "beside the post office",
)
TIMES = (
    "yesterday afternoon", "last weekend", "early this morning", "on Tuesday", "after the meeting",
    "before lunch", "during the storm", "later that evening", "every summer", "two days ago",
    "on the first of May", "at half past seven", "around midnight", "last winter", "this afternoon",
)
CONNECTORS = ("and then", "but", "so", "because", "while", "and after that", "although", "and")
OPENERS = ("I think", "apparently", "as far as I know", "to be fair", "in the end", "as usual", "well")


def clause(rng: np.random.Generator, opening: bool) -> str:
    """One emotionally neutral clause, so that the labels come from prosody, not from words.

    Openers ("I think, ...") only start a sentence.
    """
    s, v, o = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
    pattern = rng.integers(5 if opening else 4)
    if pattern == 0:
        return f"{s} {v} {o} {rng.choice(PLACES)}"
    if pattern == 1:
        return f"{rng.choice(TIMES)}, {s} {v} {o}"
    if pattern == 2:
        return f"{s} {v} {o}"
    if pattern == 3:
        return f"{s} {v} {o} {rng.choice(PLACES)} {rng.choice(TIMES)}"
    return f"{rng.choice(OPENERS)}, {s} {v} {o} {rng.choice(TIMES)}"


def sentence(rng: np.random.Generator, num_words: int) -> str:
    """Joins clauses until the text has at least ``num_words`` words."""
    parts = [clause(rng, opening=True)]
    while sum(len(p.split()) for p in parts) < num_words:
        parts.append(f"{rng.choice(CONNECTORS)} {clause(rng, opening=False)}")
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


def sample_cues(rng: np.random.Generator) -> dict[str, float]:
    """Standard scores of the five prosodic cues: independent N(0, 1), clipped to [-2, 2]."""
    return {cue: float(np.clip(rng.standard_normal(), -2.0, 2.0)) for cue in CUES}


LABEL_WEIGHTS = {
    "EmoAct": {"rate": 0.65, "pitch": 0.45, "effort": 0.55},
    "EmoVal": {"contour": 0.80, "pitch": 0.25},
    "EmoDom": {"rate": 0.45, "effort": 0.60, "crescendo": 0.45},
}
RATER_NOISE = {"EmoAct": 0.30, "EmoVal": 0.45, "EmoDom": 0.30}
"""Std of the Gaussian noise added to each attribute: disagreement of the averaged raters."""


def attribute_labels(cues: dict[str, float], noise: dict[str, float]) -> dict[str, float]:
    """The label formulas (documented in data/demo/README.md).

    attribute = 4 + sum(weight * cue) + noise, clipped to [1, 7] and rounded to 1/5 steps
    like the mean of five raters. ``noise`` holds standard normal draws per attribute.
    """
    labels = {}
    for name, weights in LABEL_WEIGHTS.items():
        value = 4.0 + sum(w * cues[c] for c, w in weights.items()) + RATER_NOISE[name] * noise[name]
        labels[name] = round(float(np.clip(value, 1.0, 7.0)) * 5) / 5
    return labels


def emotion_class(arousal: float, valence: float, dominance: float) -> str:
    """MSP-Podcast class code from the attributes (documented in data/demo/README.md).

    Near the centre of the arousal-valence plane (distance < 1) is neutral (N); otherwise
    the quadrant: active positive happy (H), active negative angry (A) when dominant else
    fear (F), passive negative sad (S), passive positive neutral (N).
    """
    a, v = arousal - 4.0, valence - 4.0
    if np.hypot(a, v) < 1.0:
        return "N"
    if a >= 0:
        if v >= 0:
            return "H"
        return "A" if dominance >= 4.0 else "F"
    return "S" if v < 0 else "N"


@dataclasses.dataclass(frozen=True)
class Synthesis:
    """espeak-ng and signal settings that realise one set of cues."""

    words_per_minute: int
    pitch: int
    contour_percent: float
    effort_db: float
    crescendo_db: float


PITCH_REFERENCE_HZ = {"Female": 195.0, "Male": 100.0}
PITCH_OCTAVES_PER_UNIT = 0.22
PITCH_STEPS = (0, 25, 50, 75, 99)
CALIBRATION_TEXT = "The weather was lovely on the way to the old station this morning."


def synthesis_settings(cues: dict[str, float], gender: str, pitch_curve: np.ndarray) -> Synthesis:
    """Maps cue standard scores to audio: the only place the cue strengths are set.

    rate: espeak ``-s`` 175 * 1.25**z wpm (112..273). pitch: median F0 of
    reference * 2**(0.22z) (100 Hz male, 195 Hz female), so pitch level is absolute for a
    gender and does not depend on the voice; espeak ``-p`` is read off the voice's
    calibration curve (clipped to 0..99). contour: pitch steps across the sentence from
    -24z % to +24z % (rising for z > 0). effort: +5z dB on the band above 1 kHz (spectral
    tilt). crescendo: a level ramp from -2z dB to +2z dB over the sentence.
    """
    target_hz = PITCH_REFERENCE_HZ[gender] * 2 ** (PITCH_OCTAVES_PER_UNIT * cues["pitch"])
    return Synthesis(
        words_per_minute=int(round(175 * 1.25 ** cues["rate"])),
        pitch=int(round(np.interp(np.log(target_hz), np.log(pitch_curve), PITCH_STEPS))),
        contour_percent=24.0 * cues["contour"],
        effort_db=5.0 * cues["effort"],
        crescendo_db=2.0 * cues["crescendo"],
    )


def median_f0(audio: np.ndarray) -> float:
    """Median F0 (Hz) over the louder frames, where the speech is voiced."""
    f0 = librosa.yin(audio, fmin=50, fmax=500, sr=SAMPLE_RATE, frame_length=1024, hop_length=256)
    rms = librosa.feature.rms(y=audio, frame_length=1024, hop_length=256)[0]
    return float(np.median(f0[rms > 0.1 * rms.max()]))


def pitch_curve(voice: Voice) -> np.ndarray:
    """Median F0 of a calibration sentence at each espeak ``-p`` of PITCH_STEPS.

    Variants differ in base pitch and in how far ``-p`` moves it, hence one curve per voice.
    """
    curve = np.array([median_f0(espeak(voice, CALIBRATION_TEXT, Synthesis(175, p, 0.0, 0.0, 0.0)))
                      for p in PITCH_STEPS])
    if np.any(np.diff(curve) <= 0):
        raise RuntimeError(f"espeak -p does not raise the pitch of {voice.espeak_name}: {curve}")
    return curve


def ssml(text: str, contour_percent: float, steps: int = 4) -> str:
    """Splits the words into ``steps`` groups whose pitch goes from -c % to +c % in order."""
    groups = [g for g in np.array_split(np.array(text.split()), min(steps, len(text.split()))) if g.size]
    offsets = np.linspace(-contour_percent, contour_percent, len(groups)) if len(groups) > 1 else [0.0]
    body = " ".join(f'<prosody pitch="{o:+.0f}%">{" ".join(g)}</prosody>' for o, g in zip(offsets, groups))
    return f"<speak>{body}</speak>"


def espeak(voice: Voice, text: str, settings: Synthesis) -> np.ndarray:
    """Synthesises SSML with espeak-ng and returns float32 audio at 16 kHz."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(
            ["espeak-ng", "-m", "-v", voice.espeak_name, "-s", str(settings.words_per_minute),
             "-p", str(settings.pitch), "-w", wav.name, ssml(text, settings.contour_percent)],
            check=True, capture_output=True,
        )
        audio, rate = soundfile.read(wav.name, dtype="float32")
    return librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")


def shape_audio(speech: np.ndarray, settings: Synthesis, rng: np.random.Generator) -> np.ndarray:
    """Trims silence, applies spectral tilt and the level ramp, sets a random peak, adds a noise floor.

    The random peak level (0.25..0.95) makes plain loudness carry no information, as
    after the pipeline's peak normalisation.
    """
    speech, _ = librosa.effects.trim(speech, top_db=40)
    pad = np.zeros(int(0.15 * SAMPLE_RATE), dtype=np.float32)
    speech = np.concatenate([pad, speech, pad])
    low = signal.sosfiltfilt(signal.butter(2, 1000, "low", fs=SAMPLE_RATE, output="sos"), speech)
    tilted = low + 10 ** (settings.effort_db / 20) * (speech - low)
    ramp_db = settings.crescendo_db * np.linspace(-1.0, 1.0, tilted.size)
    shaped = tilted * 10 ** (ramp_db / 20)
    shaped *= rng.uniform(0.25, 0.95) / np.max(np.abs(shaped))
    noise = rng.standard_normal(shaped.size) * 10 ** (-55 / 20) * np.max(np.abs(shaped))
    return np.clip(shaped + noise, -1.0, 1.0).astype(np.float32)


def synthesise(voice: Voice, settings: Synthesis, target_seconds: float,
               rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Picks a sentence whose spoken length is near ``target_seconds`` and inside the corpus range.

    The word count starts from the speaking rate and is rescaled by the measured duration;
    each try draws new text. The first clip within 15 % of the target is kept, else the
    closest one inside the range after eight tries.
    """
    num_words = max(4, round(target_seconds * settings.words_per_minute / 60 * 0.8))
    best: tuple[float, np.ndarray, str] | None = None
    for _ in range(8):
        text = sentence(rng, num_words)
        audio = shape_audio(espeak(voice, text, settings), settings, rng)
        seconds = audio.size / SAMPLE_RATE
        miss = abs(np.log(seconds / target_seconds))
        if MIN_SECONDS + 0.1 <= seconds <= MAX_SECONDS - 0.3 and (best is None or miss < best[0]):
            best = (miss, audio, text)
        if best is not None and best[0] < np.log(1.15):
            break
        num_words = max(4, round(num_words * target_seconds / seconds))
    if best is None:
        raise RuntimeError(f"no sentence of {target_seconds:.1f} s for {voice.espeak_name} at {settings}")
    return best[1], best[2]


def target_duration(rng: np.random.Generator) -> float:
    """Durations skewed to short clips like MSP-Podcast: log-normal, median 4.6 s, 3..10.5 s."""
    return float(np.clip(rng.lognormal(np.log(4.6), 0.35), 3.0, 10.5))


@dataclasses.dataclass(frozen=True)
class Utterance:
    file_name: str
    voice: Voice


def utterances() -> list[Utterance]:
    """Names follow MSP-Podcast (``MSP-PODCAST_<podcast>_<segment>``); unlabelled use MSP-UNLABELED."""
    result = []
    for voice in voices():
        prefix = "MSP-UNLABELED" if voice.split == "Unlabeled" else "MSP-PODCAST"
        for segment in range(1, UTTERANCES_PER_VOICE + 1):
            result.append(Utterance(f"{prefix}_{voice.speaker_id:04d}_{segment:04d}.ogg", voice))
    return result


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


OGG_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ OGG_CRC_TABLE[(crc >> 24) ^ byte]
    return crc


def ogg_vorbis(audio: np.ndarray, serial: int) -> bytes:
    """Encodes Ogg Vorbis with a fixed stream serial number.

    libsndfile draws the serial from the clock, so without this every rebuild would
    change every committed file; the serial and the page checksums are rewritten.
    """
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLE_RATE, format="OGG", subtype="VORBIS",
                    compression_level=VORBIS_COMPRESSION)
    data = bytearray(buffer.getvalue())
    pos = 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS":
            raise ValueError(f"no Ogg page at byte {pos}")
        segments = data[pos + 26]
        size = 27 + segments + sum(data[pos + 27:pos + 27 + segments])
        data[pos + 14:pos + 18] = serial.to_bytes(4, "little")
        data[pos + 22:pos + 26] = bytes(4)
        data[pos + 22:pos + 26] = ogg_crc(data[pos:pos + size]).to_bytes(4, "little")
        pos += size
    return bytes(data)


def utterance_seeds(seed: int, count: int) -> list[tuple[np.random.SeedSequence, np.random.SeedSequence]]:
    """Two independent streams per utterance: labels never depend on how synthesis went."""
    return [tuple(child.spawn(2)) for child in np.random.SeedSequence(seed).spawn(count)]


def draw_cues(seed: np.random.SeedSequence) -> tuple[dict[str, float], dict[str, float]]:
    """The cues and the standard normal rater noise of one utterance."""
    rng = np.random.default_rng(seed)
    cues = sample_cues(rng)
    return cues, {name: float(rng.standard_normal()) for name in LABEL_WEIGHTS}


def make_utterance(utt: Utterance, cue_seed: np.random.SeedSequence, synthesis_seed: np.random.SeedSequence,
                   curve: np.ndarray) -> tuple[np.ndarray, dict[str, object]]:
    """Audio and its row: MSP label columns first, then cues, noise, settings, measured F0 and text."""
    cues, noise = draw_cues(cue_seed)
    rng = np.random.default_rng(synthesis_seed)
    settings = synthesis_settings(cues, utt.voice.gender, curve)
    audio, text = synthesise(utt.voice, settings, target_duration(rng), rng)
    labels = attribute_labels(cues, noise)
    row = {
        "FileName": utt.file_name, "EmoClass": emotion_class(labels["EmoAct"], labels["EmoVal"], labels["EmoDom"]),
        **labels, "SpkrID": utt.voice.speaker_id, "Gender": utt.voice.gender, "Split_Set": utt.voice.split,
        "Voice": utt.voice.espeak_name, "Seconds": round(audio.size / SAMPLE_RATE, 3),
        **{f"cue_{c}": round(cues[c], 4) for c in CUES},
        **{f"noise_{k}": round(v, 4) for k, v in noise.items()},
        **{k: round(v, 2) for k, v in dataclasses.asdict(settings).items()},
        "median_f0_hz": round(median_f0(audio), 1), "Text": text,
    }
    return audio, row


def audio_folder(utt: Utterance) -> str:
    return "Unlabeled" if utt.voice.split == "Unlabeled" else "Audios"


def build(output: Path, seed: int) -> list[dict[str, object]]:
    """Synthesises every utterance and writes audio, labels and the cue sidecar."""
    for sub in ("Audios", "Labels", "Unlabeled"):
        shutil.rmtree(output / sub, ignore_errors=True)
        (output / sub).mkdir(parents=True)
    curves = {voice.speaker_id: pitch_curve(voice) for voice in voices()}
    plan = utterances()
    rows = []
    for serial, (utt, (cue_seed, synthesis_seed)) in enumerate(zip(plan, utterance_seeds(seed, len(plan))), 1):
        audio, row = make_utterance(utt, cue_seed, synthesis_seed, curves[utt.voice.speaker_id])
        (output / audio_folder(utt) / utt.file_name).write_bytes(ogg_vorbis(audio, serial))
        rows.append(row)
        print(f"\r[{serial:4d}/{len(plan)}] {utt.file_name}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    write_csv(output / "Labels" / "labels_consensus.csv", LABEL_COLUMNS,
              [r for r in rows if r["Split_Set"] != "Unlabeled"])
    write_csv(output / "prosody_cues.csv", list(rows[0]), rows)
    return rows


def write_csv(path: Path, columns: tuple[str, ...] | list[str], rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def summary(rows: list[dict[str, object]], output: Path) -> str:
    """Counts per split, speakers, durations, label statistics and size on disk."""
    lines = []
    for split in ("Train", "Development", "Test1", "Unlabeled"):
        part = [r for r in rows if r["Split_Set"] == split]
        speakers = sorted({r["SpkrID"] for r in part})
        minutes = sum(r["Seconds"] for r in part) / 60
        lines.append(f"{split:12s} {len(part):4d} utterances, {len(speakers):2d} speakers, {minutes:5.1f} min")
    seconds = np.array([r["Seconds"] for r in rows])
    lines.append(f"durations {seconds.min():.2f}..{seconds.max():.2f} s, total {seconds.sum() / 60:.1f} min")
    labelled = [r for r in rows if r["Split_Set"] != "Unlabeled"]
    for name in LABEL_WEIGHTS:
        values = np.array([r[name] for r in labelled])
        lines.append(f"{name}: mean {values.mean():.2f} std {values.std():.2f} "
                     f"range {values.min():.1f}..{values.max():.1f}")
    classes = [r["EmoClass"] for r in labelled]
    lines.append("EmoClass: " + ", ".join(f"{c} {classes.count(c)}" for c in sorted(set(classes))))
    size = sum(p.stat().st_size for p in output.rglob("*.ogg"))
    lines.append(f"audio on disk {size / 1e6:.1f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--output", type=Path, default=Path("data/demo"))
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng is needed to build the corpus (apt-get install espeak-ng)")
    rows = build(args.output, args.seed)
    print(summary(rows, args.output))


if __name__ == "__main__":
    main()
