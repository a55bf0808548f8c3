"""The pipeline's file sinks: GZIP TFRecords compressed with ISA-L's igzip, and every
sink working in a folder whose name holds glob characters.

Beam's ``WriteToTFRecord`` compresses with zlib at level 6, which took 2.9 ms per
utterance, longer than decoding its audio. ISA-L (the ``isal`` package) writes the same
GZIP format with SIMD code: at its level 2 (the default here) 0.24 ms for files the size
zlib's level 1 makes (61 KB per utterance against 57 KB at zlib 6), at level 3 0.46 ms
for zlib-6 sizes. The files are ordinary GZIP TFRecords at any level, read the same way.

Beam's file sinks find their temporary and final files again by glob, with the output
folder's name taken as part of the pattern: in ``out[1]`` they found nothing and failed
("src and dst files do not exist"), and in ``run*`` the clean-up before the renames would
delete the shards of every ``run...`` sibling. ``LiteralPaths`` matches the folder's name
literally (``pipeline.paths``).
"""

from __future__ import annotations

from typing import BinaryIO

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filebasedsource import ReadAllFiles
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import Write
from apache_beam.io.textio import _TextSink
from apache_beam.io.tfrecordio import _TFRecordSink, _TFRecordSource
from isal import igzip

from pipeline.flags import DEFAULT_GZIP_LEVEL, GZIP_LEVELS  # the --gzip-level values, defined with the flag
from pipeline.paths import literal_pattern, remove_folder


class _ClosingGzipFile(igzip.IGzipFile):
    """An IGzipFile that also closes the file it writes into (the sink closes only what
    ``open`` returned)."""

    def close(self) -> None:
        target = self.fileobj
        super().close()
        if target is not None:
            target.close()


class LiteralPaths(FileBasedSink):
    """A Beam file sink (mixed in before it) that finds its files by their literal folder.

    Beam 2.77's ``FileBasedSink`` globs, and deletes (``FileSystems.delete`` takes
    patterns), with file names made from the output prefix in four places; each is
    overridden here with the names made literal, otherwise as Beam does it.
    """

    def _get_final_name_glob(self, num_shards, w=None):
        pattern = super()._get_final_name_glob(num_shards, w)
        prefix, suffix = self.file_path_prefix.get(), self.file_name_suffix.get()
        return literal_pattern(prefix) + pattern[len(prefix):len(pattern) - len(suffix)] + literal_pattern(suffix)

    def pre_finalize(self, init_result, writer_results):
        stale = [m.path for result in FileSystems.match([self._get_final_name_glob(len(list(writer_results)))])
                 for m in result.metadata_list]
        if stale:
            FileSystems.delete([literal_pattern(path) for path in stale])

    def finalize_windowed_write(self, init_result, writer_results, unused_pre_finalize_results, w=None):
        yield from super().finalize_windowed_write(init_result, writer_results, unused_pre_finalize_results, w)
        remove_folder(init_result)  # Beam's delete of it took its name as a pattern

    def _check_state_for_finalize_write(self, writer_results, num_shards, window=None):
        if not writer_results:
            return [], [], [], 0
        src_glob = FileSystems.join(literal_pattern(FileSystems.split(writer_results[0])[0]), "*")
        dst_glob = self._get_final_name_glob(num_shards, window)
        src_glob_files = {m.path for result in FileSystems.match([src_glob]) for m in result.metadata_list}
        dst_glob_files = {m.path for result in FileSystems.match([dst_glob]) for m in result.metadata_list}
        src_files, dst_files, delete_files, num_skipped = [], [], [], 0
        for shard_num, src in enumerate(writer_results):
            dst = self._get_final_name(shard_num, num_shards, window)
            src_exists, dst_exists = src in src_glob_files, dst in dst_glob_files
            if not src_exists and not dst_exists:
                raise BeamIOError(f"src and dst files do not exist. src: {src}, dst: {dst}")
            if not src_exists:  # renamed by an earlier attempt
                num_skipped += 1
            elif dst_exists and FileSystems.checksum(src) == FileSystems.checksum(dst):
                delete_files.append(literal_pattern(src))  # only ever passed to FileSystems.delete
            else:
                src_files.append(src)
                dst_files.append(dst)
        self._report_sink_lineage(dst_glob, dst_files)
        return src_files, dst_files, delete_files, num_skipped


class _TFRecordFiles(LiteralPaths, _TFRecordSink):
    pass


class _TextFiles(LiteralPaths, _TextSink):
    pass


class _WriteFiles(beam.PTransform):
    """``Write(sink)`` one level down, as Beam's ``WriteTo...`` transforms nest it (the
    same step names in the job graph)."""

    def __init__(self, sink: FileBasedSink):
        super().__init__()
        self._sink = sink

    def expand(self, lines: beam.PCollection) -> beam.PCollection:
        return lines | Write(self._sink)


def write_tfrecords(file_path_prefix: str) -> beam.PTransform:
    """Serialised records -> uncompressed ``<prefix>-SSSSS-of-NNNNN`` TFRecord files (``WriteToTFRecord``)."""
    return _WriteFiles(_TFRecordFiles(file_path_prefix, coders.BytesCoder(), "", 0, None,
                                      CompressionTypes.UNCOMPRESSED))


def read_tfrecords() -> beam.PTransform:
    """Uncompressed TFRecord file names -> their records (``ReadAllFromTFRecord``, which
    globs each file's name again after matching it: nothing read in ``out[1]``)."""
    return beam.Map(literal_pattern) | ReadAllFiles(
        splittable=False, compression_type=CompressionTypes.UNCOMPRESSED, desired_bundle_size=0, min_bundle_size=0,
        source_from_file=_literal_tfrecord_source)


def _literal_tfrecord_source(path: str) -> _TFRecordSource:
    return _TFRecordSource(literal_pattern(path), coders.BytesCoder(), CompressionTypes.UNCOMPRESSED, validate=False)


def write_text(file_path_prefix: str, file_name_suffix: str) -> beam.PTransform:
    """Lines -> ``<prefix>-SSSSS-of-NNNNN<suffix>`` text files (``WriteToText``)."""
    return _WriteFiles(_TextFiles(file_path_prefix, file_name_suffix))


class _GzipTFRecordSink(LiteralPaths, _TFRecordSink):
    """Beam's TFRecord sink (record framing, shard naming, temp files and renames) with the
    compression done here, at ``level``."""

    def __init__(self, file_path_prefix: str, file_name_suffix: str, num_shards: int, level: int):
        super().__init__(file_path_prefix, coders.BytesCoder(), file_name_suffix, num_shards,
                         shard_name_template=None, compression_type=CompressionTypes.UNCOMPRESSED)
        self._level = level

    def open(self, temp_path: str) -> BinaryIO:
        # mtime 0 and no file name in the header: the same records give the same bytes.
        return _ClosingGzipFile(filename="", mode="wb", compresslevel=self._level, mtime=0,
                                fileobj=super().open(temp_path))


class WriteGzipTFRecords(beam.PTransform):
    """Serialised records -> ``<prefix>-SSSSS-of-NNNNN<suffix>`` GZIP TFRecord files.

    Returns the written file names, as ``WriteToTFRecord`` does.
    """

    def __init__(self, file_path_prefix: str, file_name_suffix: str, num_shards: int = 0,
                 level: int = DEFAULT_GZIP_LEVEL):
        super().__init__()
        if level not in GZIP_LEVELS:
            raise ValueError(f"GZIP level must be 0..3 (ISA-L), got {level}")
        self._sink = _GzipTFRecordSink(file_path_prefix, file_name_suffix, num_shards, level)

    def expand(self, payloads: beam.PCollection) -> beam.PCollection:
        return payloads | Write(self._sink)
