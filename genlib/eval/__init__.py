"""Quality you can measure: ``genlib eval`` (single-device, Ray-free).

- :mod:`genlib.eval.record`: the eval record, its keys and where it lives in a run folder;
- :mod:`genlib.eval.features`: the frozen ImageNet feature network (EfficientNet-Lite0 by default);
- :mod:`genlib.eval.metrics`: Frechet distance, KID, k-NN precision/recall, PSNR/SSIM in a hole;
- :mod:`genlib.eval.likelihood`: VAE ELBO/IWAE bounds, palette baselines for PixelRNN;
- :mod:`genlib.eval.completion`: mask completion against mean-fill and harmonic baselines;
- :mod:`genlib.eval.run`: ``evaluate_checkpoint`` / ``evaluate_run``, what the CLI and training call.

This package file imports nothing, so that ``genlib.train.report`` can read records
(``genlib.eval.record``) without pulling in the evaluation code.
"""
