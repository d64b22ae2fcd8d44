"""The model registry on real bundles: load, swap, unload, and a failed load that keeps the old version."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.core import jobs
from service.core.config import CoreConfig
from service.core.errors import LoadError, ModelNotFoundError
from service.core.inputs import rows
from service.core.registry import ModelRegistry, ModelState
from service.core.repository import scan

CONFIG = CoreConfig(device="cpu", max_batch_delay_ms=1, request_timeout_s=5)


def repo_with(tmp: Path, toy: Path, *entries: tuple[str, str]) -> Path:
    for name, version in entries:
        shutil.copytree(toy, tmp / name / version)
    return tmp


def corrupt(bundle: Path) -> None:
    (bundle / "weights.bin").write_bytes(b"not the weights")


def run(coro):
    return asyncio.run(coro)


def test_scan_takes_positive_integer_versions_that_hold_a_bundle(tmp_path, toy_bundle):
    repo = repo_with(tmp_path, toy_bundle, ("a", "1"), ("a", "10"), ("a", "0"), ("a", "v2"), ("b", "3"))
    (repo / "c" / "1").mkdir(parents=True)  # no manifest: not a version
    found = scan(repo)
    assert {name: sorted(v) for name, v in found.items()} == {"a": ["1", "10"], "b": ["3"]}


def test_every_model_loads_and_a_broken_one_is_unavailable_with_its_reason(tmp_path, toy_bundle):
    repo = repo_with(tmp_path, toy_bundle, ("good", "1"), ("also", "2"), ("broken", "1"))
    corrupt(repo / "broken" / "1")

    async def main():
        registry = ModelRegistry(CONFIG, _observers(), repository=repo, default_model="good")
        await registry.load_all()
        try:
            index = {m.name: m for m in registry.index()}
            lease = registry.lease(None)
            ids = (await jobs.next_token(lease.instance, rows(lease.instance, [[1, 2, 3]]), 3))[0].token_ids
            lease.release()
            return index, ids
        finally:
            await registry.stop(1)

    index, ids = run(main())
    assert index["good"].state == index["also"].state == ModelState.READY and index["also"].version == "2"
    assert index["broken"].state == ModelState.UNAVAILABLE and "corrupt" in index["broken"].reason
    assert len(ids) == 3


def test_a_swap_serves_new_requests_from_the_new_version_and_old_leases_finish_on_the_old(tmp_path, toy_bundle):
    repo = repo_with(tmp_path, toy_bundle, ("toy", "1"))

    async def main():
        registry = ModelRegistry(CONFIG, _observers(), repository=repo)
        await registry.load_all()
        old = registry.lease("toy")  # a request that started before the swap
        shutil.copytree(toy_bundle, repo / "toy" / "2")
        await registry.load("toy")
        new = registry.lease("toy")
        assert new.served.version == "2" and old.served.version == "1"
        # The old version still answers its request, and is listed as going.
        prompt = rows(old.instance, [[1, 2, 3]])
        before = (await jobs.next_token(old.instance, prompt, 2))[0].logprobs
        states = {(m.version, m.state) for m in registry.index()}
        assert ("1", ModelState.UNLOADING) in states and ("2", ModelState.READY) in states
        old.release()
        await asyncio.wait_for(registry.wait_retired(), 10)
        after = (await jobs.next_token(new.instance, rows(new.instance, [[1, 2, 3]]), 2))[0].logprobs
        new.release()
        with pytest.raises(ModelNotFoundError, match="version '1'"):
            registry.lease("toy", "1")
        await registry.stop(1)
        return before, after, registry.retiring

    before, after, retiring = run(main())
    np.testing.assert_allclose(before, after)  # the same weights, so the same answer
    assert not retiring, "the old version was released"


def test_a_failed_load_keeps_the_old_version_serving(tmp_path, toy_bundle):
    repo = repo_with(tmp_path, toy_bundle, ("toy", "1"))

    async def main():
        registry = ModelRegistry(CONFIG, _observers(), repository=repo)
        await registry.load_all()
        shutil.copytree(toy_bundle, repo / "toy" / "2")
        corrupt(repo / "toy" / "2")
        with pytest.raises(LoadError, match="version 2 failed"):
            await registry.load("toy")
        lease = registry.lease("toy")
        index = registry.index()
        lease.release()
        await registry.stop(1)
        return lease.served.version, index

    version, index = run(main())
    assert version == "1"
    assert [(m.version, m.state) for m in index] == [("1", ModelState.READY), ("2", ModelState.UNAVAILABLE)]


def test_unload_refuses_new_requests_and_lets_running_ones_finish(tmp_path, toy_bundle):
    repo = repo_with(tmp_path, toy_bundle, ("toy", "1"), ("other", "1"))

    async def main():
        registry = ModelRegistry(CONFIG, _observers(), repository=repo, max_loaded=2)
        await registry.load_all()
        running = registry.lease("toy")
        await registry.unload("toy")
        with pytest.raises(ModelNotFoundError):
            registry.lease("toy")
        answer = await jobs.score(running.instance, rows(running.instance, [[1, 2, 3]]))
        running.release()
        await asyncio.wait_for(registry.wait_retired(), 10)
        await registry.load("toy")
        shutil.copytree(toy_bundle, repo / "third" / "1")
        with pytest.raises(LoadError, match="MAX_LOADED_MODELS=2"):
            await registry.load("third")
        await registry.stop(1)
        return answer

    assert len(run(main())[0].logprobs) == 2


def _observers():
    from service.server.metrics import Metrics

    return Metrics()  # the real observer: its labels must take every state change
