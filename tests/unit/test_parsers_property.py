"""Property tests: every parser of an input file, fed random and mutated documents, returns a valid
object or raises the project's own error (one line), never another exception."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeseg.bench.results import BenchRow, ResultsError, load_results
from edgeseg.config import Recipe, load_recipe, recipe_from_dict
from edgeseg.errors import CheckpointError, ConfigError
from edgeseg.export.meta import META_SCHEMA_VERSION, validate_meta
from edgeseg.pipeline import read_state

EXAMPLES = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "results"

# Values a hostile or careless file may hold where a number, string or list is expected.
odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5000), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, data: st.DataObject, times: int = 3) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, times))):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["drop", "rename", "set"]))
        if isinstance(parent, dict) and action == "drop" and len(parent) > 1:
            parent.pop(path[-1])  # a missing key
        elif isinstance(parent, dict) and action == "rename":
            parent[data.draw(st.text(max_size=10))] = parent.pop(path[-1])  # an unknown key, any characters
        else:
            parent[path[-1]] = data.draw(odd)
    return doc


RECIPE = json.loads(json.dumps(load_recipe(REPO / "recipes" / "camvid_mnv2_os16.yaml").to_dict()))


@EXAMPLES
@given(data=st.data())
def test_recipe_mutations(data: st.DataObject) -> None:
    doc = _mutate(RECIPE, data)
    try:
        assert isinstance(recipe_from_dict(doc), Recipe)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@EXAMPLES
@given(text=st.text(max_size=300))
def test_recipe_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("r") / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)


META = {
    "schema_version": META_SCHEMA_VERSION,
    "target": "openvino",
    "precision": "int8",
    "model_file": "model.xml",
    "input_name": "input",
    "output_name": "logits",
    "input_size": [360, 480],
    "output_stride": 16,
    "classes": {"names": ["a", "b"], "colors": [[0, 0, 0], [9, 9, 9]], "ignore_index": 255},
    "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "data": {"format": "camvid", "root": "../shared/data/camvid", "split": "val"},
    "quant": {"method": "percentile", "qat": True},
    "source_checkpoint": "runs/x/qat.pt",
    "source_checkpoint_sha256": "ab" * 32,
    "recipe_hash": "0123456789abcdef",
    "tool_versions": {"edgeseg": "0.1.0", "openvino": "2025.0"},
}


def test_meta_baseline_is_valid() -> None:
    assert validate_meta(META, "meta").output_stride == 16  # so the mutations below start from a good file


@EXAMPLES
@given(data=st.data())
def test_meta_mutations(data: st.DataObject) -> None:
    try:
        validate_meta(_mutate(META, data), "meta")
    except CheckpointError as exc:
        assert "\n" not in str(exc)


ROW = json.loads((FIXTURES / "x86_cpu_handmade.json").read_text())["rows"][0]


@EXAMPLES
@given(data=st.data())
def test_result_row_mutations(data: st.DataObject) -> None:
    try:
        row = BenchRow.from_dict(_mutate(ROW, data))
    except ResultsError as exc:
        assert "\n" not in str(exc)
        return
    # What is accepted is usable: the numbers a report sorts and stars on are real.
    assert row.miou is None or 0 <= row.miou <= 100
    assert row.latency["p50"] >= 0


@EXAMPLES
@given(doc=st.recursive(odd, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3))))
def test_results_and_pipeline_files(tmp_path_factory: pytest.TempPathFactory, doc: Any) -> None:
    folder = tmp_path_factory.mktemp("f")
    for name, read, error in (("results.json", load_results, ResultsError), ("pipeline.json", read_state, ConfigError)):
        path = folder / name
        path.write_text(json.dumps({"schema_version": 1, "rows": [doc]} if name == "results.json" else doc))
        try:
            read(path)
        except error as exc:
            assert "\n" not in str(exc)


def _checkpoint_meta() -> dict[str, Any]:
    from edgeseg.data import classes as C

    return {
        "format_version": 1,
        "arch": {"num_classes": 11, "output_stride": 16, "width_mult": 1.0, "head": "deeplabv3plus", "aux_loss": False, "multi_grid": None},
        "recipe": copy.deepcopy(RECIPE),
        "classes": C.CAMVID.to_dict(),
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "model": {},
    }


def test_checkpoint_meta_baseline_is_valid() -> None:
    from edgeseg.train.checkpoint import check_meta

    check_meta(_checkpoint_meta(), "x.pt")


@EXAMPLES
@given(data=st.data())
def test_checkpoint_meta_mutations(data: st.DataObject) -> None:
    from edgeseg.train.checkpoint import check_meta

    try:
        check_meta(_mutate(_checkpoint_meta(), data), "x.pt")
    except CheckpointError as exc:
        assert "\n" not in str(exc)
