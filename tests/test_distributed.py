"""Beyond one process: streamed contrast data, sharded extraction and sweeps on a local Ray instance
(``RayExecutor``, handed to extract and sweep).

Ray starts once for the module (2 CPUs, 2 actors holding stories260K, reused by every test), so
the Ray tests cost one start-up (~10 s) and one model load per actor.
"""

from __future__ import annotations

import csv
import json
import sys
import threading
import time

import pytest
import torch

import steerlab
from steerlab.data.sources import CsvPairs, HFPairs, JsonlPairs, ListPairs, ParquetPairs
from steerlab.distributed import DistributedError, RayExecutor, actors, shutdown_pool
from steerlab.evaluate.sweep import autotune, sweep
from steerlab.extraction.methods import ReadOutMethod, get_method
from steerlab.extraction.methods.mean_diff import MeanDiffAccumulator
from steerlab.extraction.run import ExtractRun
from steerlab.extraction.shards import extract_sharded

from .conftest import CAA, STORIES
from .context_fit import ab_records_within_context

N = 16
POS = [f"Lily was happy and the sun was out on day {i}" for i in range(N)]
NEG = [f"Lily was sad and the rain fell on day {i}" for i in range(N)]
PAIRS = steerlab.pairs_from_lists(POS, NEG)
OPENINGS = ["Once upon a time", "The cat", "Lily was", "Tom saw a"]
TEXTS = ["Once upon a time, there was a little girl named Lily.", "The dog ran to the park.", "Tom had a red ball."]
TOL = 1e-5


def sharded(lm, pairs, method: str, layers: list[int], shard_size: int, **options) -> steerlab.SteeringVector:
    """``method`` read over shards of ``shard_size`` pairs (``options``: :class:`ExtractRun` fields)."""
    return extract_sharded(ExtractRun(lm, layers, **options), get_method(method), pairs, shard_size)


def max_diff(a: steerlab.SteeringVector, b: steerlab.SteeringVector) -> float:
    assert a.layers == b.layers
    return max(float((a.directions[k] - b.directions[k]).abs().max()) for k in a.layers)


@pytest.fixture(scope="module")
def ray_session():
    """The ``ray`` module, with a local instance of 2 CPUs running for the module's tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    shutdown_pool()
    ray.shutdown()


@pytest.fixture()
def pair_files(tmp_path):
    """The same pairs as JSONL (with a blank line), CSV and Parquet (row groups of 5)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    rows = [{"positive": p, "negative": n} for p, n in zip(POS, NEG)]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows[:10]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[10:]))
    with (tmp_path / "pairs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["positive", "negative"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet", row_group_size=5)
    return {"jsonl": jsonl, "csv": tmp_path / "pairs.csv", "parquet": tmp_path / "pairs.parquet"}


# ----------------------------------------------------------------------------- streamed data
def test_file_sources_read_ranges_and_round_robin_shards(pair_files):
    for kind, cls in (("jsonl", JsonlPairs), ("csv", CsvPairs), ("parquet", ParquetPairs)):
        src = steerlab.open_pairs(pair_files[kind])
        assert isinstance(src, cls), kind
        assert len(src) == N and list(src) == PAIRS, kind
        assert list(src.pairs(7, 13)) == PAIRS[7:13], kind  # parquet: starts inside the second row group
        assert list(src.shard(1, 3)) == PAIRS[1::3], kind
        assert list(src.pairs(N - 3)) == PAIRS[N - 3 :], kind


def test_hf_dataset_sources_stream(pair_files):
    datasets = pytest.importorskip("datasets")
    streamed = steerlab.open_pairs("json", data_files=str(pair_files["jsonl"]))  # load_dataset(..., streaming=True)
    assert isinstance(streamed, HFPairs)
    assert list(streamed.pairs(5, 9)) == PAIRS[5:9] and len(streamed) == N
    renamed = datasets.Dataset.from_list([{"chosen": p, "rejected": n} for p, n in zip(POS, NEG)])
    src = steerlab.open_pairs(renamed, columns={"positive": "chosen", "negative": "rejected"})
    assert list(src.shard(0, 4)) == PAIRS[0::4] and len(src) == N
    iterable = renamed.to_iterable_dataset()
    src = steerlab.open_pairs(iterable, columns={"positive": "chosen", "negative": "rejected"})
    assert list(src.pairs(N - 2)) == PAIRS[N - 2 :] and len(src) == N


def test_bad_records_name_their_place(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\n{"positive": "a"\n')
    with pytest.raises(steerlab.DatasetError, match=r"bad.jsonl:2: not valid JSON"):
        list(steerlab.open_pairs(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"positive": "a", "negative": "b"}\n{"positive": " ", "negative": "b"}\n')
    with pytest.raises(steerlab.DatasetError, match=r"empty.jsonl:2 has an empty positive"):
        list(steerlab.open_pairs(empty))
    cols = tmp_path / "cols.csv"
    cols.write_text("pos,neg\na,b\n")
    with pytest.raises(steerlab.DatasetError, match="'positive' and 'negative' columns"):
        list(steerlab.open_pairs(cols))


def test_sharded_extraction_in_one_process_equals_extract(lm, pair_files):
    """A PairSource is read shard by shard (never all in memory) and gives extract's vectors."""
    for method in ("mean_diff", "pca_center"):
        want = steerlab.extract(lm, PAIRS, method=method, layers=[1, 3], batch_size=4)
        src = JsonlPairs(pair_files["jsonl"])
        got = sharded(lm, src, method, [1, 3], 5, batch_size=4)
        assert max_diff(want, got) <= TOL, method
        assert got.data_hash == want.data_hash and got.meta["n_pairs"] == N and got.meta["shards"] == 4


# ----------------------------------------------------------------------------- refusals
def test_without_ray_the_error_says_how_to_install_it(lm, vec, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DistributedError, match=r"pip install steerlab\[ray\]"):
        steerlab.extract(lm, PAIRS, layers=[1], executor=RayExecutor(workers=2))
    with pytest.raises(DistributedError, match=r"pip install steerlab\[ray\]"):
        sweep(lm, vec, "cost", TEXTS, coefficients=[0, 1], executor=RayExecutor(workers=2))


def test_wrapped_models_and_bad_worker_counts_are_refused(lm):
    wrapped = steerlab.wrap_model(lm.model, lm.tokenizer, "wrapped")
    with pytest.raises(DistributedError, match="wrap_model"):
        steerlab.extract(wrapped, PAIRS, layers=[1], executor=RayExecutor(workers=2))
    with pytest.raises(DistributedError, match="positive number"):
        steerlab.extract(lm, PAIRS, layers=[1], executor=RayExecutor(workers=0))
    with pytest.raises(TypeError, match="workers"):  # an address alone: how many actors is not said
        RayExecutor(address="auto")
    with pytest.raises(steerlab.DatasetError, match="nothing to shard"):
        steerlab.extract(
            lm, [steerlab.ContrastPair("Love", "Hate")], method="actadd", layers=[1], executor=RayExecutor(workers=2)
        )
    with pytest.raises(steerlab.DatasetError, match=r"executor=RayExecutor\(workers=N\)"):  # the old spelling
        steerlab.extract(lm, PAIRS, layers=[1], workers=2)
    with pytest.raises(steerlab.DatasetError, match="cannot run on an executor"):
        steerlab.extract(lm, PAIRS, method="bipo", layers=[1], executor=RayExecutor(workers=2))


def test_extraction_and_evaluation_never_import_distributed():
    """Distributed is an executor handed to extract and sweep: they never import it."""
    import ast
    from pathlib import Path

    root = Path(steerlab.__file__).parent
    for path in [*(root / "extraction").rglob("*.py"), *(root / "evaluate").rglob("*.py"), root / "executor.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            assert not any("distributed" in n for n in names), f"{path} imports {names}"


# ----------------------------------------------------------------------------- on Ray
@pytest.mark.parametrize("method", ["mean_diff", "pca_diff", "pca_center", "probe"])
def test_ray_extraction_equals_single_process(lm, ray_session, pair_files, method):
    want = steerlab.extract(lm, PAIRS, method=method, layers=[1, 2, 3], batch_size=4)
    got = steerlab.extract(
        lm,
        steerlab.open_pairs(pair_files["jsonl"]),
        method=method,
        layers=[1, 2, 3],
        batch_size=4,
        executor=RayExecutor(workers=2),
    )
    assert max_diff(want, got) <= TOL
    assert got.data_hash == want.data_hash and got.meta["read"] == want.meta["read"]
    assert got.meta["workers"] == 2 and got.meta["shards"] > 2


class SlowMeanDiff(MeanDiffAccumulator):
    """mean_diff, slowed down so that a worker can be killed in the middle of a shard."""

    def update(self, acts: torch.Tensor, positive: torch.Tensor) -> None:
        time.sleep(0.15)
        super().update(acts, positive)


def test_killed_worker_is_restarted_and_its_shard_redone_once(lm, ray_session, tmp_path, caplog):
    ray = ray_session
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship SlowMeanDiff to the workers
    steerlab.extraction.methods.register(
        ReadOutMethod("slow_mean_diff", get_method("mean_diff").fit, "slow", accumulator=SlowMeanDiff)
    )
    try:
        want = steerlab.extract(lm, PAIRS, layers=[1, 3], batch_size=2)
        handles = actors(lm, 2)
        pids = ray.get([h.pid.remote() for h in handles])
        ckpt = tmp_path / "run.ckpt"
        out: dict[str, object] = {}

        def run() -> None:
            try:
                out["vec"] = sharded(
                    lm, PAIRS, "slow_mean_diff", [1, 3], 6, batch_size=2, checkpoint=ckpt, executor=RayExecutor(2)
                )
            except BaseException as exc:  # pragma: no cover - reported below
                out["error"] = exc

        caplog.set_level("INFO", logger="steerlab.extraction.shards")
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("run.ckpt.shard-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # both workers are inside a shard, each past its first batch
        assert len(list(tmp_path.glob("run.ckpt.shard-*"))) == 2
        ray.kill(handles[0], no_restart=False)
        thread.join(timeout=300)
        assert "error" not in out, out.get("error")
        got = out["vec"]
        assert isinstance(got, steerlab.SteeringVector)
        assert max_diff(want, got) <= TOL  # a shard counted twice (or lost) would move the mean far more
        assert ray.get(handles[0].pid.remote()) != pids[0]  # restarted
        assert ray.get(handles[1].pid.remote()) == pids[1]
        assert any("resumed after" in r.getMessage() for r in caplog.records)  # from its shard checkpoint
        assert not list(tmp_path.iterdir())  # checkpoints removed
    finally:
        del steerlab.extraction.methods.REGISTRY["slow_mean_diff"]
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture()
def one_thread():
    """The thread count of each worker: matrix sums split alike, so floats agree bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _same(a: object, b: object) -> bool:
    """Equal values, with NaN equal to NaN (``json`` writes both as ``NaN``; floats by their exact repr)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def test_ray_sweeps_equal_single_process(lm, vec, ray_session, one_thread):
    sets = [[1], [2, 3], [3]]
    for kind, data, extra in (
        ("sentiment", OPENINGS, {"max_new_tokens": 5}),
        ("behavior", ab_records_within_context(lm, CAA / "test" / "sycophancy" / "test_dataset_ab.json", 4), {}),
        ("cost", TEXTS, {}),
    ):
        want = sweep(lm, vec, kind, data, coefficients=[-4, 0, 4], layer_sets=sets, **extra)
        got = sweep(lm, vec, kind, data, coefficients=[-4, 0, 4], layer_sets=sets, executor=RayExecutor(2), **extra)
        # exact, NaN included (a metric with nothing to measure, e.g. distinct-2 of one-word
        # continuations, is NaN on both sides; NaN != NaN once pickled through Ray): compared as JSON text
        assert _same(got.grids, want.grids), kind
        assert _same(got.rows(), want.rows()), kind
    want = autotune(lm, vec, "sentiment", OPENINGS, coefficients=[2, 4], layer_sets=sets, max_new_tokens=5)
    got = autotune(
        lm, vec, "sentiment", OPENINGS, coefficients=[2, 4], layer_sets=sets, max_new_tokens=5, executor=RayExecutor(2)
    )
    assert got.to_dict() | {"created": None} == want.to_dict() | {"created": None}


def test_cli_extract_and_sweep_with_workers(lm, ray_session, pair_files, tmp_path, one_thread):
    from typer.testing import CliRunner

    from steerlab.cli import app

    runner = CliRunner()
    model = ["--model", str(STORIES)]
    out = tmp_path / "v"
    res = runner.invoke(
        app,
        [
            "--quiet",
            "extract",
            *model,
            "--pairs",
            str(pair_files["csv"]),
            "--layers",
            "1-3",
            "--batch-size",
            "4",
            "--workers",
            "2",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    got = steerlab.SteeringVector.load(out)
    assert max_diff(got, steerlab.extract(lm, PAIRS, layers=[1, 2, 3], batch_size=4)) <= TOL
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    grids = []
    for workers in ([], ["--workers", "2"]):
        res = runner.invoke(
            app,
            [
                "--json",
                "sweep",
                "cost",
                *model,
                "--vector",
                str(out),
                "--data",
                str(texts),
                "--coefs",
                "0,4",
                "--out",
                str(tmp_path / f"sw{len(workers)}"),
                *workers,
            ],
            catch_exceptions=False,
        )
        assert res.exit_code == 0, res.output
        grids.append(json.loads(res.output)["grids"])
    assert grids[0] == grids[1]
    res = runner.invoke(app, ["extract", *model, "--persona", "a:b", "--ray-address", "auto", "--out", str(out)])
    assert res.exit_code == 2 and "--workers" in res.output


def test_shard_jobs_ship_small_sources(pair_files):
    """What a shard job ships: a file source is its path, pairs in memory only the shard's own."""
    import pickle

    from steerlab.extraction.shards import _window

    assert len(pickle.dumps(JsonlPairs(pair_files["jsonl"]))) < 400
    part, start, stop = _window(ListPairs(PAIRS), 3, 5)
    assert isinstance(part, ListPairs) and len(part) == 2 and list(part.pairs(start, stop)) == PAIRS[3:5]
    assert _window(src := JsonlPairs(pair_files["jsonl"]), 3, 5) == (src, 3, 5)


@pytest.mark.slow
def test_default_model_persona_vector_on_two_workers(ray_session):
    from steerlab.data.demo import OPENINGS as DEMO

    lm = steerlab.load_model("default")
    pairs = steerlab.persona_pairs("happy", "sad", list(DEMO))
    want = steerlab.extract(lm, pairs, layers=range(8, 20))
    got = steerlab.extract(lm, pairs, layers=range(8, 20), executor=RayExecutor(workers=2))
    # Each shard computes its own prefix tree, so its passes group tokens differently from the
    # single process's and float32 rounding differs in proportion to the activations (up to ~4 here;
    # in one process the prefix tree vs the full forward already differ by 7e-6): relative tolerance.
    scale = max(1.0, max(float(want.directions[k].abs().max()) for k in want.layers))
    assert max_diff(want, got) <= TOL * scale
    assert got.data_hash == want.data_hash
    shutdown_pool()
