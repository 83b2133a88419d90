"""Writes docs/configuration.md: every field of the shipped configs, its default per stage,
and the comment that explains it in the config files.

  python docs/gen_config_reference.py           # rewrite docs/configuration.md
  python docs/gen_config_reference.py --check   # exit 1 if the file is out of date

(`make docs` runs the first.) The values come from each file's `get_config(arg)`; the
explanations are the config files' own comments (a comment on a field's line, or the
comment lines just above it) and the docstrings of imagen_video_jax/configs/common.py's section helpers.
`tests/test_docs.py` fails when the checked-in page differs from what this prints.
"""

import importlib.util
import io
import pathlib
import re
import sys
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUTPUT = ROOT / 'docs' / 'configuration.md'
COMMON = 'imagen_video_jax/configs/common.py'

# (config file, what it is, [(column title, get_config argument)])
CONFIGS = [
  (
    'imagen_video_jax/configs/digits.py',
    'The Moving Digits cascade (the one shipped in `checkpoints/digits`) and its tiny variants.',
    [
      ('base', 'stage=base'),
      ('tsr', 'stage=tsr'),
      ('ssr', 'stage=ssr'),
      ('base, tiny', 'stage=base,tiny=True'),
      ('tsr, tiny', 'stage=tsr,tiny=True'),
      ('ssr, tiny', 'stage=ssr,tiny=True'),
    ],
  ),
  (
    'imagen_video_jax/configs/imagen_video.py',
    "The seven stages of the paper's cascade.",
    [(s, f'stage={s}') for s in ('base', 'tsr1', 'ssr1', 'ssr2', 'tsr2', 'tsr3', 'ssr3')],
  ),
]

# configs/common.py's helpers -> the section they fill ('' = top-level fields).
_COMMON_SECTIONS = {
  'run': '',
  'spec': 'spec',
  'diffusion': 'diffusion',
  'optim': 'optim',
  'distill': 'distill',
  'frame_cond': 'frame_cond',
}
_SKIP_COMMENTS = re.compile(r'#\s*(fmt:|noqa|type:)')


def _load(path: str):
  spec = importlib.util.spec_from_file_location('_ivj_doc_' + pathlib.Path(path).stem, ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _comments(source: str) -> dict[int, tuple[str, bool]]:
  """line number -> (comment text, whether the line holds nothing but the comment)."""
  out = {}
  lines = source.splitlines()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT and not _SKIP_COMMENTS.match(tok.string):
      row = tok.start[0]
      alone = lines[row - 1].strip().startswith('#')
      out[row] = (tok.string.lstrip('#').strip(), alone)
  return out


def field_comments(path: str) -> dict[str, str]:
  """'section.field' (or 'section' for a whole section) -> its comment in file `path`."""
  source = (ROOT / path).read_text()
  comments = _comments(source)
  lines = source.splitlines()
  out: dict[str, str] = {}
  section = None  # None: not inside a config-building block

  def above(row: int) -> list[str]:
    texts = []
    r = row - 1
    while r >= 1 and r in comments and comments[r][1]:
      texts.insert(0, comments[r][0])
      r -= 1
    return texts

  for row, line in enumerate(lines, 1):
    helper = re.match(r'def (\w+)\(', line)
    if helper:
      section = _COMMON_SECTIONS.get(helper.group(1)) if path == COMMON else None
      continue
    if re.match(r'def get_config\(', line):
      section = ''
      continue
    if re.match(r'\S', line):  # anything else at module level ends a block
      section = None
      continue
    assign = re.match(r'\s*c\.(\w+)\s*=\s*(.*)', line)
    if assign and section is not None:
      name, rhs = assign.groups()
      opens_section = 'ConfigDict(' in rhs or re.match(r'_common\.\w+\(', rhs)
      text = above(row) + ([comments[row][0]] if row in comments and not comments[row][1] else [])
      if text:
        out[name] = ' '.join(text)
      section = name if opens_section else ''
      continue
    if re.match(r'\s*_common\.run\(', line):
      section = ''
      continue
    kwarg = re.match(r'\s*(\w+)=', line)
    if kwarg and section is not None:
      key = '.'.join(filter(None, [section, kwarg.group(1)]))
      text = above(row) + ([comments[row][0]] if row in comments and not comments[row][1] else [])
      if text:
        out[key] = ' '.join(text)
  return out


def section_docs() -> dict[str, str]:
  """Section -> the first line of the configs/common.py helper that fills it."""
  common = _load(COMMON)
  out = {}
  for helper, section in _COMMON_SECTIONS.items():
    doc = (getattr(common, helper).__doc__ or '').strip().splitlines()
    if doc and section:
      out[section] = doc[0]
  return out


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def _level(lv: dict) -> str:
  s = f'{lv["channels"]}x{lv["num_res_blocks"]}'
  if lv['spatial_attention']:
    s += ' S'
  if lv['cross_attention']:
    s += ' X'
  return s + {'attention': ' Ta', 'conv': ' Tc', 'none': ''}[lv['temporal']]


def _value(v) -> str:
  if isinstance(v, (tuple, list)) and v and all(isinstance(x, dict) for x in v):
    return ', '.join(_level(x) for x in v)
  if isinstance(v, float) and abs(v) >= 1e6:
    return f'{v:.4g}'
  if isinstance(v, (tuple, list)):
    return repr(tuple(v))
  return repr(v)


def _cell(text: str) -> str:
  return text.replace('|', '\\|')


def render() -> str:
  sys.path.insert(0, str(ROOT))
  common_comments = field_comments(COMMON)
  sections_doc = section_docs()
  out = [
    '# Configuration reference',
    '',
    '<!-- Generated by docs/gen_config_reference.py (`make docs`); do not edit by hand. -->',
    '',
    'Every field of the shipped training configs with its default for each stage. A job',
    'takes a config file and its argument, `--config=configs/digits.py:stage=base`, and',
    'any field can be overridden on the command line, `--config.optim.lr=1e-4`. The',
    "explanations are the config files' own comments; fields without one are named",
    'after the library argument they set (see the docstrings of `imagen_video_jax.Stage`,',
    '`UNetConfig`, `DiffusionConfig`, `SamplerConfig` and `PipelineConfig`).',
    '',
    '`model.levels` lists the U-Net levels from the highest resolution down, each as',
    '`CHANNELSxBLOCKS` followed by `S` (spatial self-attention), `X` (text',
    'cross-attention) and `Ta` / `Tc` (temporal attention / temporal convolution; neither:',
    'no temporal mixing).',
    '',
  ]
  for path, what, columns in CONFIGS:
    module = _load(path)
    comments = {**common_comments, **field_comments(path)}
    values = [_flatten(module.get_config(arg).to_dict()) for _, arg in columns]
    fields = list(dict.fromkeys(k for v in values for k in v))
    out += [f'## `{path}`', '', what, '']
    by_section: dict[str, list[str]] = {}
    for f in fields:
      by_section.setdefault(f.split('.')[0] if '.' in f else '', []).append(f)
    for section, names in by_section.items():
      title = f'`{section}`' if section else 'top-level fields'
      out += [f'### {title} ({path})', '']
      intro = [t for t in (sections_doc.get(section), comments.get(section)) if t]
      if intro:
        out += [' '.join(intro), '']
      args = ' | '.join(f'`{arg}`' for _, arg in columns)
      out += [f'| field | {args} | what it is |', '|---' * (len(columns) + 2) + '|']
      for f in names:
        cells = [_cell(_value(v[f])) if f in v else '—' for v in values]
        cells = [f'`{c}`' if c != '—' else c for c in cells]
        note = _cell(comments.get(f, ''))
        out.append(f'| `{f}` | ' + ' | '.join(cells) + f' | {note} |')
      out.append('')
  return '\n'.join(out).rstrip('\n') + '\n'


def main(argv: list[str]) -> int:
  text = render()
  if '--check' in argv:
    if OUTPUT.read_text() != text:
      print(f'{OUTPUT} is out of date: run `make docs`', file=sys.stderr)
      return 1
    return 0
  OUTPUT.write_text(text)
  print(f'wrote {OUTPUT}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
