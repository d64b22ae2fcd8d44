"""The model registry: which models exist, which version of each serves, and the swap between versions.

A repository (its layout on disk: service.core.repository) is a directory of models, each a
directory of numbered versions, each a bundle. The highest version serves, as in Triton. A single
bundle directory (MODEL_DIR) is a repository of one model under its manifest's name and version.

A swap never fails a request: the new version is loaded and warmed beside the old one; new requests
get it once it is ready; every request holds a lease on the version it got until its answer has left
(streams included), and the old version is stopped and released only when its last lease is given
back. A load that fails leaves what was serving in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bundlespec import BundleFormatError, read_manifest
from service.core.bundle import Bundle, load_bundle
from service.core.config import CoreConfig, CoreObservers
from service.core.errors import BundleError, LoadError, ModelNotFoundError
from service.core.instance import ModelInstance
from service.core.memory import rss_bytes, trim_heap
from service.core.repository import fingerprint, highest, name_problem, scan, version_order

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass(eq=False)  # compared and hashed by identity: each loaded version is its own
class Served:
    """One loaded version of a model, and the requests that hold it."""

    name: str
    version: str
    instance: ModelInstance
    resident_bytes: int
    loaded_at: float = field(default_factory=time.time)
    leases: int = 0
    retired: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0 and self.retired:
            self.idle.set()


class Lease:
    """A request's hold on the version it got; given back once (the server does it after the last byte)."""

    __slots__ = ("served", "_held")

    def __init__(self, served: Served) -> None:
        self.served = served
        self._held = True
        served.leases += 1

    @property
    def instance(self) -> ModelInstance:
        return self.served.instance

    def release(self) -> None:
        if self._held:
            self._held = False
            self.served.release()


@dataclass(frozen=True)
class ModelStatus:
    name: str
    version: str
    state: ModelState
    reason: str = ""


def _give_memory_back() -> None:
    """After a version is released: collect it, and hand the freed heap pages back (trim_heap). The
    server freezes what its start made out of the collector's passes (service/server/app.py), the
    versions loaded then included: they come back into view for this pass, so that a released one's
    cycles are collected, and what is left (the serving versions, the new one too) is frozen again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    trim_heap()


class ModelRegistry:
    """name -> the serving version (runner, batchers, scheduler), plus versions being retired."""

    def __init__(
        self,
        config: CoreConfig,
        observers: CoreObservers,
        *,
        repository: Path | None = None,
        single: Path | None = None,
        default_model: str | None = None,
        max_loaded: int = 0,
        retire_grace_s: float = 30.0,
        open_bundle: Callable[[Path], Bundle] = load_bundle,
    ) -> None:
        if (repository is None) == (single is None):
            raise ValueError("give a repository or a single bundle directory")
        self.config = config
        self.observers = observers
        self.repository = repository
        self.single = single
        self.default_model = default_model
        self.max_loaded = max_loaded
        self.retire_grace_s = retire_grace_s
        self._open = open_bundle
        self.serving: dict[str, Served] = {}
        self.retiring: set[Served] = set()
        self._failed: dict[str, ModelStatus] = {}  # name -> the last failed load
        self._failed_files: dict[str, tuple] = {}  # name -> the failed version's fingerprint() then
        self._left_out: dict[str, str] = {}  # name -> why load_all did not load it (MAX_LOADED_MODELS)
        self._busy: dict[str, tuple[str, ModelState]] = {}  # name -> (version, LOADING) while it loads
        self._lock = asyncio.Lock()  # one load or unload at a time: RSS deltas stay each model's own
        self._retirements: set[asyncio.Task[None]] = set()

    # -- what exists --------------------------------------------------------------------------------

    def available(self) -> dict[str, dict[str, Path]]:
        """What the repository holds now: {name: {version: path}}."""
        if self.single is not None:
            # The manifest alone names it: the whole bundle is checked once, when it loads.
            try:
                manifest = read_manifest(self.single)
            except BundleFormatError:
                return {self.single.name: {"1": self.single}}
            return {manifest.name: {manifest.version: self.single}}
        assert self.repository is not None
        return scan(self.repository)

    def index(self) -> list[ModelStatus]:
        """Every model of the repository with its state, as Triton lists them: the version that serves
        (READY), a version that failed to load (UNAVAILABLE, with the reason), one being loaded or
        released, and models that are not loaded."""
        out: dict[tuple[str, str], ModelStatus] = {}
        for name, served in self.serving.items():
            out[name, served.version] = ModelStatus(name, served.version, ModelState.READY)
        for served in self.retiring:
            out[served.name, served.version] = ModelStatus(served.name, served.version, ModelState.UNLOADING)
        for name, status in self._failed.items():
            out.setdefault((name, status.version), status)
        for name, (version, state) in self._busy.items():
            out[name, version] = ModelStatus(name, version, state)
        listed = {name for name, _ in out}
        for name, versions in self._known().items():
            if name not in listed:
                version = highest(versions)
                reason = self._left_out.get(name, "not loaded")
                out[name, version] = ModelStatus(name, version, ModelState.UNAVAILABLE, reason)
        return sorted(out.values(), key=lambda m: (m.name, version_order(m.version)))

    def _known(self) -> dict[str, dict[str, Path]]:
        if self.single is not None:
            return {}  # a single bundle is always loaded (or failed) under its manifest's name
        return self.available()

    def ready(self) -> list[Served]:
        return sorted(self.serving.values(), key=lambda s: s.name)

    def default_name(self) -> str | None:
        """DEFAULT_MODEL; when it is not loaded and only one model is, that one."""
        if self.default_model in self.serving or len(self.serving) != 1:
            return self.default_model
        return next(iter(self.serving))

    # -- requests ----------------------------------------------------------------------------------

    def lease(self, name: str | None, version: str | None = None) -> Lease:
        """The serving version of `name` (the default model when None), held until released; raises
        ModelNotFoundError for a model that is not loaded, or a version that is not the serving one."""
        wanted = name if name is not None else self.default_name()
        served = self.serving.get(wanted) if wanted is not None else None
        if served is None:
            loaded = ", ".join(sorted(self.serving)) or "none"
            if name is None:
                raise ModelNotFoundError(f"no model was named and the default model {wanted!r} is not loaded; "
                                         f"loaded: {loaded}")  # fmt: skip
            raise ModelNotFoundError(f"the model {name!r} is not loaded; loaded: {loaded}")
        if version not in (None, "", served.version):
            raise ModelNotFoundError(
                f"model {served.name!r} has no version {version!r} loaded; it serves version {served.version!r}"
            )
        return Lease(served)

    # -- control -----------------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Load the highest version of every model; a failure is recorded and does not stop the others.
        Past MAX_LOADED_MODELS, the default model goes first and the rest in name order."""
        names = sorted(self.available(), key=lambda n: n != self.default_model)
        for name in names:
            if self.max_loaded and len(self.serving) >= self.max_loaded:
                self._left_out[name] = f"not loaded: MAX_LOADED_MODELS={self.max_loaded} models are loaded"
                log.warning("%s is not loaded: MAX_LOADED_MODELS=%d models are loaded (%s)", name,
                            self.max_loaded, ", ".join(sorted(self.serving)))  # fmt: skip
                continue
            with contextlib.suppress(LoadError):
                await self.load(name)

    async def load(self, name: str) -> Served:
        """Load the highest version of `name`, or swap to it if another version serves; a no-op when it
        already serves. Raises LoadError (and leaves what serves in place) when it cannot."""
        async with self._lock:
            versions = self.available().get(name)
            if not versions:
                raise LoadError(f"the repository has no model {name!r}")
            version = highest(versions)
            current = self.serving.get(name)
            if current is not None and current.version == version:
                return current
            problem = name_problem(name) if self.repository is not None else None
            if problem is not None:
                self._fail(name, version, versions[version], problem)
                raise LoadError(f"model {name!r} cannot be served: {problem}")
            if current is None and self.max_loaded and len(self.serving) >= self.max_loaded:
                raise LoadError(
                    f"MAX_LOADED_MODELS={self.max_loaded} models are loaded ({', '.join(sorted(self.serving))}); "
                    f"unload one before loading {name!r}"
                )
            self._busy[name] = (version, ModelState.LOADING)
            self.observers.model_state(name, version, ModelState.LOADING, 0)
            try:
                served = await self._start(name, version, versions[version])
            except Exception as e:
                reason = str(e) if isinstance(e, BundleError | LoadError) else f"{type(e).__name__}: {e}"
                self._fail(name, version, versions[version], reason)
                raise LoadError(f"loading model {name!r} version {version} failed: {reason}") from e
            finally:
                self._busy.pop(name, None)
            self._failed.pop(name, None)
            self._left_out.pop(name, None)
            self.serving[name] = served  # new requests get it from here on
            self.observers.model_state(name, version, ModelState.READY, served.resident_bytes)
            log.info("serving %s version %s (%.0f MB resident)", name, version, served.resident_bytes / 1e6)
            if current is not None:
                self._retire(current)
            return served

    def _fail(self, name: str, version: str, path: Path, reason: str) -> None:
        log.error("loading %s version %s failed: %s", name, version, reason)
        self._failed[name] = ModelStatus(name, version, ModelState.UNAVAILABLE, reason)
        self._failed_files[name] = fingerprint(path)
        self.observers.model_state(name, version, ModelState.UNAVAILABLE, 0)

    async def unload(self, name: str) -> None:
        """New requests for `name` get 404 at once; requests already running finish on it."""
        async with self._lock:
            served = self.serving.pop(name, None)
            if served is None:
                raise ModelNotFoundError(f"the model {name!r} is not loaded")
            self._retire(served)

    async def poll(self) -> None:
        """Bring what serves in line with the repository: new models and versions load, removed ones go."""
        available = self.available()
        for name in list(self.serving):
            if name not in available:
                with contextlib.suppress(ModelNotFoundError):
                    await self.unload(name)
        for name, status in list(self._failed.items()):  # a failed version whose directory is gone
            if status.version not in available.get(name, {}):
                self._failed.pop(name)
                self.observers.model_state(name, status.version, "", 0)
        for name, versions in available.items():
            served = self.serving.get(name)
            failed = self._failed.get(name)
            newest = highest(versions)
            # A version that failed is tried again only once its files have changed.
            same = failed is not None and failed.version == newest
            retry = not (same and self._failed_files[name] == fingerprint(versions[newest]))
            if (served is None or served.version != newest) and retry:
                with contextlib.suppress(LoadError):
                    await self.load(name)

    async def stop(self, grace_s: float) -> None:
        """Stop every version: serving ones finish their work within grace_s."""
        for served in list(self.serving.values()):
            await served.instance.stop(grace_s)
        self.serving.clear()
        for task in list(self._retirements):
            task.cancel()
        for served in list(self.retiring):
            await served.instance.stop(0)

    async def wait_retired(self) -> None:
        """Until every retired version is released (the tests wait on it)."""
        while self._retirements:
            await asyncio.gather(*self._retirements, return_exceptions=True)

    # -- internals ---------------------------------------------------------------------------------

    async def _start(self, name: str, version: str, path: Path) -> Served:
        if self.repository is not None and not path.resolve().is_relative_to(self.repository.resolve()):
            raise BundleError(f"{path} leads outside the repository {self.repository} (a symlink out of it)")

        def build() -> tuple[ModelInstance, int]:
            before = rss_bytes()
            bundle = self._open(path)
            model = ModelInstance(bundle, self.config, self.observers.model(name, version), name=name)
            model.warm_up()
            return model, max(rss_bytes() - before, 0)

        model, resident = await asyncio.to_thread(build)
        model.start()
        return Served(name, version, model, resident)

    def _retire(self, served: Served) -> None:
        served.retired = True
        if served.leases == 0:
            served.idle.set()
        self.retiring.add(served)
        self.observers.model_state(served.name, served.version, ModelState.UNLOADING, served.resident_bytes)
        task = asyncio.get_running_loop().create_task(self._release(served))
        self._retirements.add(task)
        task.add_done_callback(self._retirements.discard)

    async def _release(self, served: Served) -> None:
        """Wait for the version's last lease (its requests and streams), then stop and free it."""
        try:
            await asyncio.wait_for(served.idle.wait(), self.config.request_timeout_s + self.retire_grace_s)
        except TimeoutError:
            log.warning("%s version %s: %d requests still hold it; stopping it anyway", served.name,
                        served.version, served.leases)  # fmt: skip
        await served.instance.stop(self.retire_grace_s)
        self.retiring.discard(served)
        self.observers.model_state(served.name, served.version, "", 0)
        log.info("released %s version %s", served.name, served.version)
        del served.instance
        await asyncio.to_thread(_give_memory_back)
