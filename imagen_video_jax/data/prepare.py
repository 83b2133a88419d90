"""Data a training job makes on first use: the Moving Digits world and its vocabulary.

A digits run (`config.data.world == 'digits'`) trains on shards of the Moving Digits
world (`data.digits`) and tokenizes captions with a SentencePiece model trained on
the world's caption set. Both are made once, inside the job's workdir
(`<workdir>/data/digits-...`) unless `data.dir` names a directory, and reused when the
job resumes. The stages of one cascade share one world by naming the same `data.dir`
(or `train --data_root=DIR`, which names `DIR/digits-...`). A workdir whose run began
when the default was `<workdir>/../data/digits-...` keeps reading the world there.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping

import jax

from imagen_video_jax.data import digits

VOCAB_FILE = 'spiece.model'


class DataDirError(ValueError):
  """`data.dir` names a directory that holds something other than the world."""


def digits_captions() -> list[str]:
  """Every caption of the world: each digit and colour, still and in each direction."""
  out = []
  for digit in range(10):
    for colour in digits.COLOURS:
      out.append(digits.caption_for(digit, colour))
      out += [digits.caption_for(digit, colour, m) for m in digits.DIRECTIONS]
  return out


def world_config(data: Mapping[str, Any]) -> digits.DigitsConfig:
  """The Moving Digits world a config's `data` section trains on (a section saved before
  `data.bounce` existed means the bouncing world v1)."""
  return digits.DigitsConfig(
    frames=int(data['clip_frames']),
    size=int(data['clip_size']),
    fps=int(data['fps']),
    bounce=bool(data.get('bounce', True)),
  )


def digits_world_name(data: Mapping[str, Any]) -> str:
  """The folder name of a world's settings, e.g. 'digits-v2-20000v-20000i-16x32-seed0'
  (world v1's names have no version: they predate it)."""
  version = world_config(data).world_version
  return (
    f'digits-{"" if version == 1 else f"v{version}-"}{data["num_videos"]}v-'
    f'{data["num_images"]}i-{data["clip_frames"]}x{data["clip_size"]}-seed{data["seed"]}'
  )


def data_world_version(data_dir: str) -> int:
  """The world version `data_dir`'s dataset_info.json records (none recorded: v1)."""
  import json

  with open(os.path.join(data_dir, 'dataset_info.json')) as f:
    return int(json.load(f).get('world_version', 1))


def _holds_run(workdir: str) -> bool:
  ckpts = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(ckpts) and bool(os.listdir(ckpts))


def digits_data_dir(data: Mapping[str, Any], workdir: str) -> str:
  """Where a digits run's shards and spiece.model live: `data.dir` if set, else
  `<workdir>/data/<world name>`, inside the job's workdir.

  A workdir that already holds checkpoints but no world of its own, beside a world at
  `<workdir>/../data/<world name>` (the default before the world moved inside the
  workdir), keeps that one: older runs resume and export as they were.

  data: the config's `data` section (a ConfigDict or the dict a checkpoint saved).
  """
  if data['dir']:
    return data['dir']
  workdir = os.path.abspath(workdir)
  inside = os.path.join(workdir, 'data', digits_world_name(data))
  legacy = os.path.join(os.path.dirname(workdir), 'data', digits_world_name(data))
  if not _has_world(inside) and _has_world(legacy) and _holds_run(workdir):
    return legacy
  return inside


def _has_world(d: str) -> bool:
  return os.path.isfile(os.path.join(d, 'dataset_info.json')) and os.path.isfile(
    os.path.join(d, VOCAB_FILE)
  )


def prepare_digits(config, workdir: str) -> str:
  """The Moving Digits shards + SentencePiece model, made on first use; returns the dir.

  Process 0 writes into a temporary directory and renames it into place, so a reader
  never sees half a world; several jobs starting together (a cascade's stages) make it
  once: the losers of the rename keep the winner's. Multi-process jobs wait for it.
  """
  from imagen_video_jax.text.tokenizer import train_sentencepiece

  d = config.data
  data_dir = digits_data_dir(d, workdir)
  world = world_config(d)
  if _has_world(data_dir) and data_world_version(data_dir) != world.world_version:
    have = data_world_version(data_dir)
    raise DataDirError(
      f'{data_dir} holds Moving Digits world v{have}, but the config asks for '
      f'v{world.world_version} (data.bounce={world.bounce}); set '
      f'--config.data.bounce={have == 1} to train on it, or point data.dir elsewhere'
    )
  if not _has_world(data_dir):
    if os.path.isdir(data_dir) and os.listdir(data_dir):
      raise DataDirError(
        f'data.dir {data_dir} is not empty but holds no Moving Digits '
        f'shards (dataset_info.json, {VOCAB_FILE}); point data.dir elsewhere'
      )
    if jax.process_index() == 0:
      tmp = f'{data_dir}.tmp{os.getpid()}'
      print(f'Making Moving Digits world v{world.world_version} in {data_dir} ...', flush=True)
      digits.write_shards(
        world,
        int(d.seed),
        tmp,
        int(d.num_videos),
        int(d.num_images),
        workers=min(8, os.cpu_count() or 1),  # the same bytes for any count
      )
      train_sentencepiece(
        digits_captions(), os.path.join(tmp, VOCAB_FILE), vocab_size=int(config.text.vocab_size)
      )
      try:
        if os.path.isdir(data_dir):
          os.rmdir(data_dir)  # empty when checked above
        os.rename(tmp, data_dir)
      except OSError:  # another job (another stage of the cascade) made it meanwhile
        if not _has_world(data_dir):
          raise
        shutil.rmtree(tmp, ignore_errors=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices('digits data')
  return data_dir
