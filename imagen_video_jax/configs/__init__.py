"""The training configs, importable wherever the package is installed.

    from imagen_video_jax.configs import digits, imagen_video
    config = digits.get_config('stage=base')

`digits`: the Moving Digits cascade (its trained weights ship: CASCADE = 'digits').
`imagen_video`: the seven stages of the paper's cascade. The repository's configs/*.py are
the same modules as files for absl's --config=FILE (`--config=configs/digits.py:stage=tsr`).
"""
