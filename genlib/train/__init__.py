"""Training: typed run config, run folder (metrics, samples, report). Ray-free;
the Ray Train driver and worker loop live in ``genlib.distributed.train``."""
