"""Only the runtime runs the model: no code outside ``src/steerlab/runtime/`` calls the LM, and inside
it only :mod:`steerlab.runtime.passes` does.

An AST walk over ``src/steerlab`` finds every call of a model: ``X.model(...)`` (``lm.model(**kwargs)``,
``self.model(...)``), ``X.model.generate(...)`` / ``.forward(...)``, and the same through a name bound
to a model (``model = lm.model; model(...)``, ``model.generate(...)``). Everything else goes through
``steerlab.runtime.passes`` (``forward``, ``run_until``, ``extend``, ``hf_generate``), so each measure is
written once (``steerlab.runtime.score``) and one module knows how transformers is called.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "steerlab"
RUNTIME = "steerlab/runtime/"
PASSES = "steerlab/runtime/passes.py"

EXEMPT = {
    ("steerlab/evaluate/scorers.py", "HFScorer.score"): (
        "the sentiment classifier: a separate sequence-classification model that scores the texts, "
        "not the LM being steered (no steering, no runtime pass applies to it)"
    ),
}
"""``(file, function)`` allowed to call a model, and why. Nothing else."""

MODEL_METHODS = {"generate", "forward", "__call__"}


@dataclass(frozen=True)
class ModelCall:
    """One call of a model: where (file, line, enclosing function) and the code called."""

    path: str
    line: int
    scope: str
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.scope or '<module>'}: {self.code}"


class _Finder(ast.NodeVisitor):
    """Collects the calls of a model in one module (names bound to ``X.model`` count as models)."""

    def __init__(self, path: str, aliases: set[str]) -> None:
        self.path = path
        self.aliases = aliases
        self.scope: list[str] = []
        self.found: list[ModelCall] = []

    def is_model(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Attribute):
            return node.attr == "model"
        return isinstance(node, ast.Name) and node.id in self.aliases

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        calls_model = self.is_model(func) or (
            isinstance(func, ast.Attribute) and func.attr in MODEL_METHODS and self.is_model(func.value)
        )
        if calls_model:
            self.found.append(ModelCall(self.path, node.lineno, ".".join(self.scope), ast.unparse(func)))
        self.generic_visit(node)


def _aliases(tree: ast.AST) -> set[str]:
    """Names assigned a model (``model = lm.model``) anywhere in the module."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr == "model":
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def model_calls(source: str, path: str = "<string>") -> list[ModelCall]:
    """Every call of a model in ``source`` (see the module docstring)."""
    tree = ast.parse(source)
    finder = _Finder(path, _aliases(tree))
    finder.visit(tree)
    return finder.found


def tree_calls() -> list[ModelCall]:
    """The model calls of every module of ``src/steerlab``."""
    out: list[ModelCall] = []
    for file in sorted(PACKAGE.rglob("*.py")):
        path = file.relative_to(SRC).as_posix()
        out += model_calls(file.read_text(encoding="utf-8"), path)
    return out


def test_nothing_outside_the_runtime_calls_the_model() -> None:
    calls = [c for c in tree_calls() if not c.path.startswith(RUNTIME) and (c.path, c.scope) not in EXEMPT]
    assert not calls, "run the model through steerlab.runtime.passes:\n" + "\n".join(map(str, calls))


def test_inside_the_runtime_only_passes_calls_the_model() -> None:
    calls = [c for c in tree_calls() if c.path.startswith(RUNTIME) and c.path != PASSES]
    assert not calls, "run the model through steerlab.runtime.passes:\n" + "\n".join(map(str, calls))
    assert any(c.path == PASSES for c in tree_calls())


def test_every_exemption_is_still_a_model_call() -> None:
    """An exemption whose call went away must go too (it would let a new call in unseen)."""
    seen = {(c.path, c.scope) for c in tree_calls()}
    assert set(EXEMPT) <= seen


PLANTED = """
import steerlab

def score(lm, ids, mask, kwargs):
    out = lm.model(input_ids=ids, attention_mask=mask)
    lm.model(**kwargs)
    seqs = lm.model.generate(input_ids=ids, max_new_tokens=4)
    return out, seqs

class Scheduler:
    def __init__(self, batcher):
        self.model = batcher.lm.model

    def step(self, kwargs):
        return self.model(**kwargs), self.model.forward(**kwargs)

def alias(lm, ids):
    model = lm.model
    model(ids)
    return model.generate(ids)
"""

CLEAN = """
import steerlab
from steerlab.runtime import hf, passes

def fine(lm, ids, mask, llm, prompts):
    out = passes.forward(lm, ids, mask, use_cache=False)
    seqs = passes.hf_generate(lm, ids, mask, max_new_tokens=4)
    texts = steerlab.generate(lm, ["The cat"])
    kwargs = hf.forward_kwargs(lm.model, input_ids=ids)
    dtype = next(lm.model.parameters()).dtype
    lm.model.config.to_dict()
    llm.generate(prompts)  # a vLLM engine, not a model object
    return out, seqs, texts, kwargs, dtype
"""


def test_the_checker_finds_planted_calls() -> None:
    found = model_calls(PLANTED, "planted.py")
    assert [(c.line, c.scope, c.code) for c in found] == [
        (5, "score", "lm.model"),
        (6, "score", "lm.model"),
        (7, "score", "lm.model.generate"),
        (15, "Scheduler.step", "self.model"),
        (15, "Scheduler.step", "self.model.forward"),
        (19, "alias", "model"),
        (20, "alias", "model.generate"),
    ]
    assert model_calls(CLEAN) == []


@pytest.mark.parametrize(
    "body",
    ["lm.model(ids)", "lm.model.generate(ids)", "m = lm.model\n    m(ids)", "self.model.forward(ids)"],
)
def test_a_planted_call_outside_the_runtime_fails_the_check(body: str) -> None:
    """The filter of the tree test, on a planted module outside the runtime (and the same module
    inside it passes)."""
    source = f"def f(self, lm, ids):\n    {body}\n"
    for path, flagged in (("steerlab/evaluate/planted.py", True), ("steerlab/runtime/planted.py", False)):
        calls = [
            c for c in model_calls(source, path) if not c.path.startswith(RUNTIME) and (c.path, c.scope) not in EXEMPT
        ]
        assert bool(calls) is flagged, (path, body)
