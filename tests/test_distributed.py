"""The torch.distributed pieces with 2 real processes (gloo on CPU), as torchrun starts them."""
import os
import socket

import torch
import torch.multiprocessing as mp

from dfkd_core.distributed import (Distributed, agree_to_stop, broadcast_object, gather_units,
                                   init_from_environment, shutdown)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="localhost",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    me = init_from_environment("cpu")
    try:
        units = me.my_units(5)
        gathered = gather_units(me, {i: torch.full((2,), float(i)) for i in units})
        stop_when_rank1_asks = agree_to_stop(me, wants_to_stop=rank == 1)
        no_one_asks = agree_to_stop(me, wants_to_stop=False)
        run_id = broadcast_object(me, "run-from-leader" if me.leader else "ignored")
        results[rank] = {"units": units, "gathered": sorted(gathered), "values": [float(gathered[i][0]) for i in
                                                                                 sorted(gathered)],
                         "stop": stop_when_rank1_asks, "go_on": not no_one_asks, "run_id": run_id}
    finally:
        shutdown(me)


def test_two_ranks_share_units_gather_them_and_stop_together():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    assert results[0]["units"] == [0, 2, 4] and results[1]["units"] == [1, 3]   # i ≡ rank (mod 2)
    for rank in (0, 1):
        assert results[rank]["gathered"] == [0, 1, 2, 3, 4] and results[rank]["values"] == [0, 1, 2, 3, 4]
        assert results[rank]["stop"] and results[rank]["go_on"]   # one rank's Ctrl-C stops both
        assert results[rank]["run_id"] == "run-from-leader"


def test_a_single_process_is_rank_0_of_1_and_joins_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    me = init_from_environment()
    assert me == Distributed() and not me.active and me.leader and me.my_units(3) == [0, 1, 2]
    assert agree_to_stop(me, True) and gather_units(me, {1: "x"}) == {1: "x"}


def test_each_rank_draws_its_own_stream_and_rank_0_the_one_process_stream():
    draws = [torch.randint(0, 10**6, (8,), generator=torch.Generator().manual_seed(Distributed(r, 4).seed(7)))
             for r in range(4)]
    alone = torch.randint(0, 10**6, (8,), generator=torch.Generator().manual_seed(Distributed().seed(7)))
    assert torch.equal(draws[0], alone)
    assert len({tuple(d.tolist()) for d in draws}) == 4   # no two ranks share a minibatch stream
