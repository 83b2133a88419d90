"""Where the weights the project ships lie: after `pip install`, in a checkout. (Loading them
by name, `ivj.pretrained`, is imagen_video_jax/pretrained_loader.py: this module stays below
the modules that load, which use it for their defaults.)

    import imagen_video_jax as ivj
    pipe = ivj.pretrained('digits')      # the Moving Digits cascade (an ivj.load_cascade pipeline)
    judge = ivj.pretrained('judge')      # the adherence judge (ivj.load_judge)
    ivj.pretrained_dir('digits')         # the directory it was loaded from

A name is looked for, in this order, in
  1. $IMAGEN_VIDEO_JAX_HOME/NAME, when that variable is set;
  2. the installed package, imagen_video_jax/_shipped/NAME (the wheel holds the judge, 0.5 MB);
  3. the checkout the package is imported from, checkpoints/NAME beside imagen_video_jax/;
  4. the cache directory, $XDG_CACHE_HOME/imagen_video_jax/NAME
     (XDG_CACHE_HOME defaults to ~/.cache).
The digits cascade (32 MB) is not in the wheel: after a plain `pip install`, copy the
repository's checkpoints/digits to ~/.cache/imagen_video_jax/digits (or set
IMAGEN_VIDEO_JAX_HOME=DIR and copy it to DIR/digits). The error names every place looked in.
"""

import os

HOME_ENV = 'IMAGEN_VIDEO_JAX_HOME'
_PACKAGE = os.path.dirname(os.path.abspath(__file__))

# name -> (what it is, the files a copy must hold, its size in the repository)
SHIPPED = {
  'digits': ('the Moving Digits cascade', ('cascade.json',), '32 MB'),
  'judge': ('the adherence judge', ('judge.json', 'params.safetensors'), '0.5 MB'),
}


class NotFoundError(FileNotFoundError):
  """No copy of a shipped checkpoint in any of the places looked in."""


def cache_dir() -> str:
  """$XDG_CACHE_HOME/imagen_video_jax (default ~/.cache/imagen_video_jax)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'imagen_video_jax')


def search_path(name: str) -> list[str]:
  """The directories where a copy of `name` is looked for, first match wins."""
  _check(name)
  dirs = []
  if os.environ.get(HOME_ENV):
    dirs.append(os.path.join(os.path.expanduser(os.environ[HOME_ENV]), name))
  dirs.append(os.path.join(_PACKAGE, '_shipped', name))
  dirs.append(os.path.join(os.path.dirname(_PACKAGE), 'checkpoints', name))
  dirs.append(os.path.join(cache_dir(), name))
  return dirs


def pretrained_dir(name: str) -> str:
  """The directory of the first complete copy of `name`; NotFoundError says where to put one."""
  what, files, size = _check(name)
  dirs = search_path(name)
  for d in dirs:
    if all(os.path.isfile(os.path.join(d, f)) for f in files):
      return d
  home = os.environ.get(HOME_ENV)
  where = os.path.join(home, name) if home else os.path.join(cache_dir(), name)
  raise NotFoundError(
    f'no copy of {what} ({name!r}: {", ".join(files)}) in any of\n'
    + ''.join(f'  {d}\n' for d in dirs)
    + f'Copy checkpoints/{name} ({size}) from a checkout of the imagen_video_jax repository '
    f'to {where}'
    + ('' if home else f' (or set {HOME_ENV}=DIR and copy it to DIR/{name})')
    + ', or pass a directory of your own.'
  )


def _check(name: str) -> tuple:
  if name not in SHIPPED:
    raise ValueError(f'unknown shipped checkpoint {name!r}; use one of {", ".join(SHIPPED)}')
  return SHIPPED[name]
