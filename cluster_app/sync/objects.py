"""Immutable zarr objects: one group per object, one array (or encoded pair) per pytree leaf.

A plain leaf is a zarr array at its path (``blocks/0/qkv/w``), so full snapshots open with plain
``zarr.open_group(...)``. An encoded leaf (:class:`~cluster_app.sync.codecs.Encoded`) is a group
at its path holding ``q`` and, for quantised codecs, ``scale``, with the original shape in the
group's attributes. Every chunk is zstd-compressed and crc32c-checksummed; chunks equal to the
fill value (all-zero deltas) are not written at all. Chunk writes go through a
:class:`~cluster_app.sync.congestion.WindowedExecutor` (AIMD concurrency).

After the data, the writer creates ``seals/<name>.json`` recording the object's exact stored
size: an object without a seal is incomplete and never read.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import numpy as np
import zarr
import zarr.api.asynchronous
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync as zsync
from zarr.storage import FsspecStore, LocalStore

from cluster_app.errors import CorruptData, StoreError
from cluster_app.sync.codecs import Encoded, get_codec
from cluster_app.sync.congestion import WindowedExecutor

__all__ = ["ObjectIO"]

Leaf = np.ndarray | Encoded


class ObjectIO:
    """Reads and writes objects under ``<url>/objects`` with seals under ``<url>/seals``."""

    def __init__(
        self,
        url: str,
        fs,
        root: str,
        storage_options: dict,
        chunk_elems: int = 1 << 18,
        executor: WindowedExecutor | None = None,
        wrap_store=None,
    ) -> None:
        self.url, self.fs, self.root = url, fs, root
        self.chunk_elems = chunk_elems
        self.executor = executor or WindowedExecutor()
        self.fs.makedirs(f"{root}/seals", exist_ok=True)
        if "://" in url:
            store = FsspecStore.from_url(url, storage_options=storage_options)
        else:
            store = LocalStore(url)
        # ``wrap_store`` lets tests put a deliberately slow or failing store underneath
        self.zarr_store = wrap_store(store) if wrap_store else store

    def _group(self, name: str, mode: str):
        return zarr.open_group(store=self.zarr_store, path=f"objects/{name}", mode=mode)

    def _chunks(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape:
            return ()
        row = int(np.prod(shape[1:], dtype=np.int64)) or 1
        return (max(1, min(shape[0], self.chunk_elems // row)), *shape[1:])

    async def _create(self, name: str, leaves: dict[str, Leaf], attrs: dict) -> list:
        """Create the group and every array concurrently (metadata writes dominate small
        objects); returns ``(array, value)`` pairs to fill."""
        group = await zarr.api.asynchronous.open_group(
            store=self.zarr_store, path=f"objects/{name}", mode="w-", attributes=attrs
        )
        specs: list[tuple[str, np.ndarray, bool]] = []
        encoded = [(p, v) for p, v in leaves.items() if isinstance(v, Encoded)]
        await asyncio.gather(
            *(group.create_group(p, attributes={"shape": list(v.shape)}) for p, v in encoded)
        )
        for path, leaf in leaves.items():
            if isinstance(leaf, Encoded):
                specs.append((f"{path}/q", leaf.q, True))
                if leaf.scale is not None:
                    specs.append((f"{path}/scale", leaf.scale, False))
            else:
                specs.append((path, leaf, False))
        # quantised payloads are low-entropy integers: zstd pays; trained float weights barely
        # compress (measured: fp16 + zstd saves ~8%), so full snapshots are only checksummed
        arrays = await asyncio.gather(
            *(
                group.create_array(
                    path,
                    shape=v.shape,
                    dtype=v.dtype,
                    chunks=self._chunks(v.shape),
                    compressors=[ZstdCodec(level=3), Crc32cCodec()]
                    if compress
                    else [Crc32cCodec()],
                    fill_value=0,
                )
                for path, v, compress in specs
            )
        )
        return [(zarr.Array(a), v) for a, (_, v, _) in zip(arrays, specs)]

    def _chunk_jobs(self, arr: zarr.Array, value: np.ndarray) -> list:
        if not value.shape:
            return [lambda: arr.__setitem__((), value)]
        step = arr.chunks[0]
        return [
            lambda lo=lo: arr.__setitem__(slice(lo, lo + step), value[lo : lo + step])
            for lo in range(0, value.shape[0], step)
        ]

    def write(self, name: str, leaves: dict[str, Leaf], attrs: dict) -> int:
        """Write object ``name`` and seal it; returns the stored size in bytes."""
        jobs = [
            job
            for arr, value in zsync(self._create(name, leaves, attrs))
            for job in self._chunk_jobs(arr, value)
        ]
        self.executor.run(jobs)
        nbytes = int(self.fs.du(f"{self.root}/objects/{name}", total=True))
        seal = json.dumps({"nbytes": nbytes, "sealed": time.time()}).encode()
        path = f"{self.root}/seals/{name}.json"
        if isinstance(self.fs, LocalFileSystem):  # a reader must never see half a seal
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            self.fs.pipe_file(tmp, seal)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, seal)  # one PUT: atomic on object storage
        return nbytes

    def seal(self, name: str) -> dict | None:
        """The seal of ``name`` (``{"nbytes": ...}``) or None while it is incomplete."""
        try:
            return json.loads(self.fs.cat_file(f"{self.root}/seals/{name}.json"))
        except (FileNotFoundError, json.JSONDecodeError):  # not (completely) there yet
            return None

    def wait_sealed(self, name: str, timeout: float = 60.0) -> dict:
        """Block until ``name`` is sealed (an asynchronous push has finished)."""
        deadline, delay = time.monotonic() + timeout, 0.002
        while (seal := self.seal(name)) is None:
            if time.monotonic() > deadline:
                raise StoreError(f"object {name!r} was not sealed within {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return seal

    def read(self, name: str) -> tuple[dict[str, Leaf], dict]:
        """All leaves of ``name`` (encoded ones as :class:`Encoded`) and its attributes."""
        try:
            group = self._group(name, "r")
            members = dict(group.members(max_depth=None))
            encoded = {
                p
                for p, node in members.items()
                if isinstance(node, zarr.Group) and "shape" in node.attrs
            }
            out: dict[str, Leaf] = {}
            for path in encoded:
                scale = members.get(f"{path}/scale")
                out[path] = Encoded(
                    members[f"{path}/q"][...],
                    None if scale is None else scale[...],
                    tuple(members[path].attrs["shape"]),
                )
            for path, node in members.items():
                if isinstance(node, zarr.Array) and path.rpartition("/")[0] not in encoded:
                    out[path] = node[...]
            attrs = dict(group.attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreError(f"object {name!r} is missing from {self.url}") from e
        except Exception as e:  # codec errors (bad checksum, truncated chunk) surface as-is
            raise CorruptData(f"object {name!r} in {self.url} failed to decode: {e}") from e
        return out, attrs

    def read_decoded(self, name: str) -> tuple[dict[str, np.ndarray], dict]:
        """Like :meth:`read`, with encoded leaves decoded to float32 arrays."""
        leaves, attrs = self.read(name)
        codec = get_codec(attrs.get("codec", "fp32"))
        return {
            p: codec.decode(v) if isinstance(v, Encoded) else v for p, v in leaves.items()
        }, attrs

    def delete(self, name: str) -> None:
        self.fs.rm(f"{self.root}/objects/{name}", recursive=True)
        if self.fs.exists(f"{self.root}/seals/{name}.json"):
            self.fs.rm(f"{self.root}/seals/{name}.json")
