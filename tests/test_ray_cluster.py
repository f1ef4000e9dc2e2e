"""``--workers`` against a real running Ray cluster: a head node started with ``ray start --head``
(token authentication, as Ray 2.60 sets up a cluster when a token exists), joined by ``steerlab
extract --workers N`` found by Ray itself (no address: Ray used to be asked for ``num_cpus``, which
it refuses when it joins a cluster) and by ``--ray-address HOST:PORT`` (which needs
``RAY_AUTH_MODE=token``; without it the error says so).

The head runs with ``--block`` in a process group of its own and is stopped by signalling that
group, not with ``ray stop`` (which stops every Ray process of the user on the machine). Its
``RAY_TMPDIR`` is a fresh folder, so neither this test nor another Ray user on the machine finds
the other's cluster. One head for the module; each driver is a CLI process (as a user runs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import steerlab

from .conftest import STORIES

pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")
pytestmark = pytest.mark.skipif(not RAY.is_file(), reason=f"Ray's command line is not installed beside Python ({RAY})")

LAYER = 2
TOL = 1e-5  # as tests/test_distributed.py: shards group the passes differently (float noise ~1e-7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Head:
    """A running head node: the environment its drivers need, its port and its temp folder."""

    def __init__(self, env: dict[str, str], port: int, tmp: Path) -> None:
        self.env, self.port, self.tmp = env, port, tmp

    def sessions(self) -> list[str]:
        """Ray's session folders under this head's temp folder (one per Ray instance started there)."""
        return sorted(p.name for p in (self.tmp / "ray").glob("session_2*"))


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # short: Ray's Unix sockets live under it (108-byte limit), so not pytest's tmp_path
    tmp = Path(tempfile.mkdtemp(prefix="steerlab-ray-", dir="/tmp"))
    src = str(Path(steerlab.__file__).resolve().parents[1])  # workers import this steerlab
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {
        "RAY_TMPDIR": str(tmp),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex,  # never written to ~/.ray
        "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
        "STEERLAB_QUIET": "1",
    }
    port = _free_port()
    cmd = [str(RAY), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2"]
    cmd += ["--include-dashboard", "false", "--disable-usage-stats"]
    log = (tmp / "head.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp / "ray" / "ray_current_cluster").is_file():  # written once the head is up
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up: {(tmp / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield Head(env, port, tmp)
    finally:
        try:  # this head's process group only: `ray start --block` stops what it started on SIGTERM
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still running
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(env: dict[str, str], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "steerlab", "--quiet", "extract", "--model", str(STORIES)]
    cmd += ["--persona", "happy:sad", "--layers", str(LAYER), "--out", str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> steerlab.SteeringVector:
    out = tmp_path_factory.mktemp("one") / "v"
    res = _extract({**os.environ, "STEERLAB_QUIET": "1"}, out)
    assert res.returncode == 0, res.stderr
    return steerlab.SteeringVector.load(out)


def _same(vec: steerlab.SteeringVector, want: steerlab.SteeringVector) -> None:
    assert vec.layers == want.layers == [LAYER]
    assert float((vec.directions[LAYER] - want.directions[LAYER]).abs().max()) <= TOL


def test_workers_join_the_cluster_ray_finds(head: Head, one_process: steerlab.SteeringVector, tmp_path: Path) -> None:
    before = head.sessions()
    res = _extract(head.env, tmp_path / "v", "--workers", "1")  # no address: Ray finds the head itself
    assert res.returncode == 0, res.stderr
    assert head.sessions() == before  # joined the head: no local Ray instance of its own
    _same(steerlab.SteeringVector.load(tmp_path / "v"), one_process)


def test_workers_join_a_cluster_by_address(head: Head, one_process: steerlab.SteeringVector, tmp_path: Path) -> None:
    before = head.sessions()
    res = _extract(head.env, tmp_path / "v", "--workers", "2", "--ray-address", f"127.0.0.1:{head.port}")
    assert res.returncode == 0, res.stderr
    assert head.sessions() == before
    _same(steerlab.SteeringVector.load(tmp_path / "v"), one_process)


def test_an_address_without_token_mode_says_what_to_set(head: Head, tmp_path: Path) -> None:
    """Ray never sends its token to an address given to it: without RAY_AUTH_MODE=token the join
    fails, and the error names what to set (not Ray's bare "Failed to connect")."""
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}
    res = _extract(env, tmp_path / "v", "--workers", "1", "--ray-address", f"127.0.0.1:{head.port}")
    assert res.returncode != 0
    assert "RAY_AUTH_MODE=token" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "v").exists()
