"""Render algorithms (single-device, Ray-free): one file per kind with one entry
point, all sharing ``optim.optimize`` (what is optimised and the criterion differ):

- ``style``: Gatys et al. neural style transfer (VGG19 features, Gram matrices, L-BFGS)
- ``deepdream``: gradient ascent on InceptionV3 mixed layers with octaves and jitter
- ``completion``: Yeh et al. 2016 semantic inpainting with a trained DCGAN + Poisson blending

The Ray Data fan-out and the Parquet manifest live in ``genlib.distributed.render``.
"""
