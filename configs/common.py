"""What the config files share: parsing get_config's 'key=value,...' argument.

The config files are loaded by path (absl's --config=FILE, importlib), not as a package;
each loads this file by path too, from beside itself.
"""


def parse_arg(arg: str, source: str, **keys) -> dict:
  """`arg` ('stage=base,tiny=True') as a dict over the defaults, checked.

  source: the config file the errors name, e.g. 'configs/digits.py'.
  keys: each key's allowed values, its default first (e.g. stage=STAGES), or a bool
    default for a flag key (tiny=False); a flag is true for 1, true or yes (any case).
  Raises ValueError naming `source` and the allowed values for an unknown key or value.
  """
  usage = ' and '.join(
    f'{k}=True|False' if isinstance(v, bool) else f'{k}=' + '|'.join(v) for k, v in keys.items()
  )
  out = {k: v if isinstance(v, bool) else v[0] for k, v in keys.items()}
  for part in filter(None, (arg or '').split(',')):
    key, _, value = part.partition('=')
    key = key.strip()
    if key not in out:
      raise ValueError(f'{source}: unknown argument {key!r}; use {usage}')
    out[key] = value.strip()
  for key, allowed in keys.items():
    if isinstance(allowed, bool):
      out[key] = str(out[key]).lower() in ('1', 'true', 'yes')
    elif out[key] not in allowed:
      raise ValueError(f'{source}: {key}={out[key]!r}; use one of {", ".join(allowed)}')
  return out
