"""The shipped weights loaded by name: `ivj.pretrained('digits')` a cascade pipeline,
`ivj.pretrained('judge')` the adherence judge. Where they are found: imagen_video_jax/shipped.py."""

from imagen_video_jax.evaluation.judge import load_judge
from imagen_video_jax.export import load_cascade
from imagen_video_jax.shipped import pretrained_dir


def pretrained(name: str):
  """The shipped `name`, loaded: 'digits' a cascade pipeline, 'judge' a Judge."""
  path = pretrained_dir(name)
  return load_judge(path) if name == 'judge' else load_cascade(path)
