"""`python -m imagen_video_jax.encode_text`: the command in `imagen_video_jax.cli.encode_text`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.encode_text', run_name='__main__', alter_sys=True)
