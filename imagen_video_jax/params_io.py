"""Parameter trees <-> safetensors files (arrays only: nothing runs on load).

A nested dict of arrays is stored flat, one tensor per '/'-joined path, in float32.
Used by exported cascades and by the Moving Digits judge.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def flatten_params(params: Mapping[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
  """{'a': {'b': x}} -> {'a/b': x} as numpy arrays."""
  flat = {}
  for k, v in params.items():
    name = f'{prefix}/{k}' if prefix else str(k)
    if isinstance(v, Mapping):
      flat.update(flatten_params(v, name))
    else:
      flat[name] = np.asarray(v)
  return flat


def key_path_name(path) -> str:
  """A pytree key path as the '/'-joined name `flatten_params` gives a parameter (dict
  keys; attribute names and indices of optimizer states alike)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The inverse of `flatten_params`."""
  tree: dict[str, Any] = {}
  for name, v in flat.items():
    node = tree
    *parents, leaf = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save_params(path: str, params: Mapping[str, Any]) -> str:
  """Writes a parameter tree as float32 safetensors."""
  from safetensors.numpy import save_file

  save_file(
    {k: np.ascontiguousarray(v, np.float32) for k, v in flatten_params(params).items()}, path
  )
  return path


def load_params(path: str) -> dict[str, Any]:
  """Reads a tree written by `save_params` (numpy arrays, in the dtypes stored).

  Raises ValueError naming the file if it is truncated or not safetensors at all.
  """
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  try:
    flat = load_file(path)
  except (SafetensorError, ValueError) as e:
    raise ValueError(
      f'{path} is not a readable safetensors file (truncated or corrupt): {e}'
    ) from None
  return unflatten_params(flat)
