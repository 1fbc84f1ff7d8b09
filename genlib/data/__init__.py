"""Corpora: raw image folders/archives -> sharded WebDataset corpora, and the
streaming loader that feeds training. Single-process and Ray-free (the Ray
build mapper lives in ``genlib.distributed.build``)."""
