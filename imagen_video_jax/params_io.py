"""Parameter trees <-> safetensors files (arrays only: nothing runs on load).

A nested dict of arrays is stored flat, one tensor per '/'-joined path, in float32 (or
float16, half the bytes: what an exported cascade may choose for its distilled students).
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


STORAGE_DTYPES = ('float32', 'float16')
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def save_params(path: str, params: Mapping[str, Any], dtype: str = 'float32') -> str:
  """Writes a parameter tree as safetensors in `dtype` (one of STORAGE_DTYPES).

  float16 keeps 11 significant bits (bfloat16 keeps 8), enough for inference weights;
  a value beyond its range (65504) is refused by name rather than stored as inf.
  """
  from safetensors.numpy import save_file

  if dtype not in STORAGE_DTYPES:
    raise ValueError(f'storage dtype {dtype!r}: choose one of {STORAGE_DTYPES}')
  flat = {}
  for k, v in flatten_params(params).items():
    v = np.asarray(v, np.float32)
    if dtype == 'float16' and v.size and float(np.max(np.abs(v))) > _FLOAT16_MAX:
      raise ValueError(
        f'parameter {k} holds {float(np.max(np.abs(v))):.3g}, beyond float16 (65504): '
        'store it in float32'
      )
    flat[k] = np.ascontiguousarray(v, dtype)
  save_file(flat, path)
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
