"""DCGAN under real DDP (gloo, CPU): each network's gradients are all-reduced
once per update (issue 13), with the same weights as the original pattern.

Two processes are spawned with torch.multiprocessing; each rank trains tiny
DCGANs on its own batches (a) with the original step written out in
``reference_dcgan_step`` (D all-reduced for the real batch, the fake batch and
again inside G's backward), (b) with the family's default ``reduce_once`` and
(c) with ``reduce_once = False``, then repeats (a) and (b) at one worker on a
one-rank group. A DDP comm hook counts the all-reduces of every backward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from genlib.models.base import unwrap
from genlib.models.dcgan import DCGAN, DCGANConfig
from tests.models.common import fixed_batch, reference_dcgan_step

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="torch built without gloo")]

STEPS = 3
# name -> (reference recipe?, g_steps, reduce_once)
RUNS = {
    "reference": (True, 1, False),
    "new": (False, 1, True),
    "old": (False, 1, False),
    "reference_g2": (True, 2, False),
    "new_g2": (False, 2, True),
}
SOLO_RUNS = ("reference", "new")


class AllReduceCounter:
    """DDP comm hook state: all-reduces a bucket like DDP's default, counting
    the backwards that reduced (``is_last``: one per reducing backward)."""

    def __init__(self, group) -> None:
        self.group = group
        self.reductions = 0

    @staticmethod
    def hook(state: "AllReduceCounter", bucket):
        if bucket.is_last():
            state.reductions += 1
        return allreduce_hook(state.group, bucket)


def _train(name: str, rank: int, group) -> dict:
    """One run: STEPS steps on this rank's batches; returns its parameters,
    D's BatchNorm buffers and the all-reduces per step of each network."""
    reference, g_steps, reduce_once = RUNS[name]
    torch.manual_seed(0)  # same initial weights on every rank
    fam = DCGAN(DCGANConfig(image_size=32, nz=16, ngf=8, ndf=8, g_steps=g_steps, reduce_once=reduce_once))
    counters = {}

    def wrap(net):
        ddp = DistributedDataParallel(net, process_group=group)
        counters[net] = AllReduceCounter(group)
        ddp.register_comm_hook(counters[net], AllReduceCounter.hook)
        return ddp

    fam.wrap(wrap)
    per_step = []
    for step in range(STEPS):
        torch.manual_seed(1000 * rank + step)
        batch = fixed_batch(8, seed=100 * rank + step)  # each rank its own images
        before = {n: counters[unwrap(net)].reductions for n, net in fam.networks.items()}
        if reference:
            reference_dcgan_step(fam, batch, g_steps)
        else:
            fam.train_step(batch)
        per_step.append({n: counters[unwrap(net)].reductions - before[n] for n, net in fam.networks.items()})
    return {"params": {f"{n}.{k}": v.detach().clone() for n, net in fam.networks.items()
                       for k, v in unwrap(net).named_parameters()},
            "d_buffers": [b.clone() for b in unwrap(fam.netD).buffers()],
            "all_reduces": per_step}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {name: _train(name, rank, None) for name in RUNS}
        solo = dist.new_group([0])  # every rank must take part in creating it
        if rank == 0:
            results["solo"] = {name: _train(name, 0, solo) for name in SOLO_RUNS}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(tmp / "store"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


def _assert_close(got: dict, want: dict, exact: bool = False) -> None:
    for k in want:
        if exact:
            assert torch.equal(got[k], want[k]), k
        else:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)


def test_all_reduces_per_step(ranks):
    for res in ranks:
        assert res["reference"]["all_reduces"] == [{"netG": 1, "netD": 3}] * STEPS  # real, fake, G's backward
        assert res["old"]["all_reduces"] == [{"netG": 1, "netD": 3}] * STEPS
        assert res["new"]["all_reduces"] == [{"netG": 1, "netD": 1}] * STEPS
        assert res["reference_g2"]["all_reduces"] == [{"netG": 2, "netD": 4}] * STEPS
        assert res["new_g2"]["all_reduces"] == [{"netG": 2, "netD": 1}] * STEPS


def test_two_workers_same_weights_as_the_original_pattern(ranks):
    for res in ranks:
        _assert_close(res["new"]["params"], res["reference"]["params"])
        _assert_close(res["new_g2"]["params"], res["reference_g2"]["params"])
        _assert_close(res["old"]["params"], res["reference"]["params"], exact=True)
        # D's running statistics too (only rank 0's are checkpointed)
        for got, want in zip(res["new"]["d_buffers"], res["reference"]["d_buffers"]):
            torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-5)
    for name in RUNS:  # every rank holds the same, all-reduced, weights
        _assert_close(ranks[1][name]["params"], ranks[0][name]["params"], exact=True)


def test_one_worker_same_weights_as_the_original_pattern(ranks):
    solo = ranks[0]["solo"]
    assert solo["new"]["all_reduces"] == [{"netG": 1, "netD": 1}] * STEPS
    assert solo["reference"]["all_reduces"] == [{"netG": 1, "netD": 3}] * STEPS
    _assert_close(solo["new"]["params"], solo["reference"]["params"], exact=True)
    # not vacuous: two workers averaged different batches
    assert any(not torch.equal(solo["new"]["params"][k], ranks[0]["new"]["params"][k])
               for k in solo["new"]["params"])
