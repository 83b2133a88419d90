r"""T5 v1.1 text-encoder settings (Imagen Video: frozen T5-XXL; Moving Digits: tiny).

  python -m imagen_video_jax.convert_t5 --source=t5-v1_1-xxl --output=checkpoints/t5_xxl
  python -m imagen_video_jax.encode_text --t5=checkpoints/t5_xxl \
      --captions=captions.txt --output=data/text_cache

`get_config('xxl')` (default) or `get_config('tiny')`; any of small, base, large, xl,
xxl, tiny. Stage configs embed this as `config.text`; the cascade builds its
`TextEncoder` from `t5_dir` (a convert_t5 output) and reads cached embeddings when
`cache_dir` is set.
"""
import ml_collections

from imagen_video_jax.models.t5 import T5Config


def get_config(arg: str = 'xxl') -> ml_collections.ConfigDict:
  size = arg or 'xxl'
  model = T5Config.from_name(size)  # Validates the name.
  c = ml_collections.ConfigDict()
  c.size = size
  c.d_model = model.d_model          # = the U-Nets' text_emb D.
  c.t5_dir = ''                      # convert_t5 output (params/, t5_config.json, spiece.model)
  c.cache_dir = ''                   # encode_text output; empty: run T5 in the loop.
  c.max_length = 128                 # tokens per caption, EOS included.
  c.compute_dtype = 'bfloat16'
  c.shard_params = True              # FSDP the encoder over the 'data' mesh axis.
  return c
