"""The user documentation: the README's shape, links that resolve, the generated
configuration reference up to date, error messages quoted as the code prints them, and
no work-history vocabulary."""

import ast
import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
MODEL_CARD = ROOT / 'checkpoints' / 'digits' / 'MODEL_CARD.md'
DOCS = sorted((ROOT / 'docs').glob('*.md'))
MAX_README_LINES = 300


def _generator():
  spec = importlib.util.spec_from_file_location(
    '_gen_config_reference', ROOT / 'docs' / ('gen_config_reference.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------------ README
def readme_problems(text: str) -> list[str]:
  """What is wrong with a README's shape: its length, and whether its first code block,
  before any section, is `make demo` then `make test`."""
  problems = []
  lines = text.splitlines()
  if len(lines) > MAX_README_LINES:
    problems.append(f'{len(lines)} lines > {MAX_README_LINES}')
  first_block = re.search(r'^```\w*\n(.*?)^```', text, re.S | re.M)
  first_section = re.search(r'^## ', text, re.M)
  if not first_block or (first_section and first_section.start() < first_block.start()):
    problems.append('no code block before the first section')
  else:
    commands = [ln.split('#')[0].strip() for ln in first_block.group(1).splitlines()]
    if [c for c in commands if c] != ['make demo', 'make test']:
      problems.append(f'the first code block is {commands}, not make demo and make test')
  return problems


def test_readme_is_short_and_starts_with_the_two_commands():
  assert readme_problems(README.read_text()) == []


def test_the_readme_check_fails_on_a_long_or_misordered_readme():
  text = README.read_text()
  assert readme_problems(text + '\n' * MAX_README_LINES)
  assert readme_problems(text.replace('make demo', 'make lint', 1))
  swapped = text.replace('make demo', '@@', 1).replace('make test', 'make demo', 1)
  assert readme_problems(swapped.replace('@@', 'make test', 1))
  assert readme_problems('# x\n\n## Section\n\n```\nmake demo\nmake test\n```\n')


# ------------------------------------------------------------------------------- links
def broken_links(path: pathlib.Path) -> list[str]:
  """Relative links of a Markdown file whose target file or #anchor does not exist."""
  broken = []
  text = path.read_text()
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if re.match(r'[a-z]+:', target):  # https:, mailto:
      continue
    file, _, anchor = target.partition('#')
    dest = (path.parent / file).resolve() if file else path
    if not dest.exists():
      broken.append(target)
    elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest.read_text()):
      broken.append(target)
  return broken


def _anchors(text: str) -> set[str]:
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
  out = set()
  for heading in re.findall(r'^#+ (.*)$', text, re.M):
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
    out.add(slug)
  return out


@pytest.mark.parametrize(
  'path', [README, MODEL_CARD, *DOCS], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_resolve(path):
  assert broken_links(path) == []


def test_the_link_check_finds_a_missing_file_and_anchor(tmp_path):
  (tmp_path / 'a.md').write_text('# Title\n\n## Some part\n')
  page = tmp_path / 'b.md'
  page.write_text(
    '[ok](a.md) [ok](a.md#some-part) [web](https://example.com/x) '
    '[gone](missing.md) [bad anchor](a.md#no-such-part)\n'
  )
  assert broken_links(page) == ['missing.md', 'a.md#no-such-part']


# --------------------------------------------------------------- configuration reference
def test_the_configuration_reference_is_up_to_date():
  gen = _generator()
  assert gen.OUTPUT.read_text() == gen.render(), (
    'docs/configuration.md is out of date: run `make docs` (python docs/gen_config_reference.py)'
  )


def test_the_reference_lists_every_field_with_its_default_and_comment():
  text = _generator().render()
  # A default per stage, and the comment the config file gives the field.
  assert re.search(r'^\| `optim.lr` \| `0.0005` \| `0.0005` \| `0.0005` \| `0.001` ', text, re.M)
  row = next(ln for ln in text.splitlines() if ln.startswith('| `data.skip_bad_records`'))
  assert 'Skip (count and log) records that cannot be read' in row
  row = next(ln for ln in text.splitlines() if ln.startswith('| `stop_after_secs`'))
  assert 'save and stop after this many seconds' in row
  # Every field of every stage's config is listed.
  gen = _generator()
  for path, _, columns in gen.CONFIGS:
    module = gen._load(path)
    for _, arg in columns:
      for field in gen._flatten(module.get_config(arg).to_dict()):
        assert f'| `{field}` |' in text, (path, arg, field)


def test_the_reference_check_fails_on_a_stale_page(tmp_path, monkeypatch):
  gen = _generator()
  stale = tmp_path / 'configuration.md'
  stale.write_text(gen.render().replace('`0.0005`', '`0.0001`', 1))
  monkeypatch.setattr(gen, 'OUTPUT', stale)
  assert gen.main(['--check']) == 1
  stale.write_text(gen.render())
  assert gen.main(['--check']) == 0


# ----------------------------------------------------------------- troubleshooting page
def _code_strings() -> list[str]:
  """Every string literal of the package and configs, f-string fields as \\x00."""
  out = []
  for py in [*(ROOT / 'imagen_video_jax').rglob('*.py'), *(ROOT / 'configs').glob('*.py')]:
    for node in ast.walk(ast.parse(py.read_text())):
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        out.append(node.value)
      elif isinstance(node, ast.JoinedStr):
        out.append(''.join(v.value if isinstance(v, ast.Constant) else '\x00' for v in node.values))
  return out


def unquoted_messages(text: str, strings: list[str]) -> list[str]:
  """The `quoted` parts of ### headings that no string in the code contains."""
  quoted = [
    q
    for heading in re.findall(r'^### (.*)$', text, re.M)
    for q in re.findall(r'`([^`]+)`', heading)
  ]
  return [q for q in quoted if not any(q in s for s in strings)]


def test_troubleshooting_quotes_the_messages_the_code_prints():
  strings = _code_strings()
  text = (ROOT / 'docs' / 'troubleshooting.md').read_text()
  assert len(re.findall(r'^### ', text, re.M)) >= 30
  assert unquoted_messages(text, strings) == []
  assert unquoted_messages('### `no program ever prints this`\n', strings) == [
    'no program ever prints this'
  ]


# ----------------------------------------------------------------------------- wording
WORK_HISTORY = re.compile(r'\bsessions?\b|kill -TERM', re.I)


@pytest.mark.parametrize('path', [README, MODEL_CARD, *DOCS], ids=lambda p: p.name)
def test_no_work_history_vocabulary(path):
  assert WORK_HISTORY.findall(path.read_text()) == []
  assert WORK_HISTORY.findall('Session 4 stopped it with kill -TERM') == ['Session', 'kill -TERM']
