r"""Imports real videos listed in a ``path,caption`` manifest into ArrayRecord shards.

  python -m imagen_video_jax.import_videos --manifest=videos.csv --output=data/real \
      --frames=16 --size=64 --fps=8

Paths in the manifest are relative to its folder (paths leaving it are refused). Bad
files are skipped and listed with their reason in ``OUTPUT/import_report.json``; only
plain media files (``importer.CONTAINERS``) are read, never playlists or URLs.
OUTPUT must be new or empty; it appears only when the import is complete (it is written
in ``.OUTPUT.importing`` next to it first), and after an interruption the same command
starts over. Duplicate manifest rows (same path and caption) are warned about.
Exit status: 0 every row imported, 3 some rows skipped, 2 nothing usable, 1 bad input.
"""

import sys

from absl import app, flags

from imagen_video_jax.data import importer

_MANIFEST = flags.DEFINE_string('manifest', None, 'CSV with path,caption columns.')
_OUTPUT = flags.DEFINE_string('output', None, 'New or empty folder for the shards and report.')
_FRAMES = flags.DEFINE_integer('frames', 16, 'Frames per clip.')
_SIZE = flags.DEFINE_string('size', '64', 'Clip size: N (square) or WxH, e.g. 80x48.')
_FPS = flags.DEFINE_float('fps', 8.0, 'Frame rate clips are resampled to.')
_MAX_CLIPS = flags.DEFINE_integer('max_clips_per_video', 0, '0 = every full clip.')
_PER_SHARD = flags.DEFINE_integer('per_shard', 1000, 'Clips per ArrayRecord shard.')
_WORKERS = flags.DEFINE_integer('workers', 2, 'Files decoded in parallel.')
_TIMEOUT = flags.DEFINE_float('timeout_s', 600.0, 'Per-file decoding limit (seconds).')
flags.mark_flags_as_required(['manifest', 'output'])

EXIT_SOME_SKIPPED = 3
EXIT_NOTHING_USABLE = 2


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from imagen_video_jax.cli import _checks

  _checks.quiet_logs()  # library INFO logs only with --verbosity
  try:
    width, height = importer.parse_size(_SIZE.value)
    config = importer.ImportConfig(
      frames=_FRAMES.value,
      width=width,
      height=height,
      fps=_FPS.value,
      max_clips_per_video=_MAX_CLIPS.value,
      per_shard=_PER_SHARD.value,
      workers=_WORKERS.value,
      timeout_s=_TIMEOUT.value,
    )
    report = importer.import_videos(_MANIFEST.value, _OUTPUT.value, config)
  except (importer.ImportSetupError, OSError) as e:
    sys.exit(f'import_videos: {e}')
  print(
    f'{report["videos_ok"]}/{report["rows"]} videos -> {report["clips"]} clips in '
    f'{len(report["shards"])} shard(s) at {_OUTPUT.value}'
  )
  if report['skipped']:
    reasons = ', '.join(f'{k}: {v}' for k, v in report['reasons'].items())
    print(
      f'skipped {report["skipped"]} ({reasons}); see {_OUTPUT.value}/{importer.REPORT_FILE}',
      file=sys.stderr,
    )
  if report['clips'] == 0:
    print('import_videos: no usable clips; nothing to train on', file=sys.stderr)
    return EXIT_NOTHING_USABLE
  return EXIT_SOME_SKIPPED if report['skipped'] else 0


if __name__ == '__main__':
  app.run(main)
