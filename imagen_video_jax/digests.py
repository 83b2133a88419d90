"""sha256 of files: what exports (cascade.json) and checkpoints (integrity.json) record,
so that a changed, truncated or tampered file is found before it is used."""

from __future__ import annotations

import hashlib


def sha256_file(path: str) -> str:
  """The hex sha256 of the file at `path`, read in 1 MiB blocks (checkpoints are large)."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()
