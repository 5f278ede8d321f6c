"""One place per extension: a sampler kind, an engine, a report table is one registry entry,
and what is not registered is an error, never a silent default."""

from __future__ import annotations

import sys
import types

import pytest

from egoqa.backends import registry
from egoqa.errors import ConfigError
from egoqa.media.frames import sample_timestamps, segment_timestamps
from egoqa.plan import samplers
from egoqa.plan.config import RunConfig, SamplerConfig, load_config
from egoqa.plan.jobs import media_key
from egoqa.report import tables
from egoqa.work.batching import frames_in


@pytest.fixture
def thirds(monkeypatch):
    """A new kind registered as a new kind would be: frames at the thirds of the timeline."""
    kind = samplers.Kind(
        fields=lambda spec: ("frames",),
        positions=lambda spec, length: [length / 3, 2 * length / 3],
        frames=lambda s, seconds: 2,
        amount=lambda s: "thirds",
    )
    monkeypatch.setitem(samplers.KINDS, "thirds", kind)
    return kind


def test_a_registered_sampler_kind_works_through_config_frames_keys_and_batching(thirds):
    spec = SamplerConfig(kind="thirds")
    assert spec.identity() == {"kind": "thirds", "max_edge": 448, "stamp": False, "frames": 8}
    assert sample_timestamps(spec, 30.0) == [10.0, 20.0]
    # 9 s of segments joined end to end: 3 s into the first, 2 s into the second
    assert segment_timestamps(spec, [(0.0, 4.0), (10.0, 15.0)], 30.0) == [3.0, 12.0]
    media = {"kind": "frames", "sampler": spec.identity(), "duration": 30.0}
    assert media_key(media) == "frames:thirds:thirds:448px"
    assert frames_in(media) == 2
    config = load_config("demo", ["sampler.kind=thirds"])
    assert config.sampler.kind == "thirds"


@pytest.mark.parametrize(
    "read",
    [
        lambda media: media_key(media),
        lambda media: frames_in(media),
        lambda media: samplers.kind(media["sampler"]["kind"]),
    ],
    ids=["media_key", "frames_in", "kind"],
)
def test_an_unknown_sampler_kind_is_an_error_wherever_it_is_read(read):
    """A spec stored by a newer egoqa (or edited by hand): not read as `dense`."""
    media = {"kind": "frames", "sampler": {"kind": "sparse", "max_edge": 448}, "duration": 9.0}
    with pytest.raises(ConfigError, match="unknown sampler kind 'sparse'"):
        read(media)


def test_a_config_with_an_unknown_sampler_kind_is_refused():
    with pytest.raises(ValueError, match="unknown sampler kind 'sparse'"):
        SamplerConfig(kind="sparse")


class Echo:
    """An engine added the way a new one is: a module, a class, a registry entry."""

    name, device, dtype = "echo", "cpu", "none"

    def __init__(self, model: str) -> None:
        self.model = model

    @classmethod
    def from_engine(cls, engine: dict, config, device: str) -> Echo:
        return cls(engine["model"])


def test_a_registered_engine_is_accepted_by_the_config_and_built_for_a_worker(monkeypatch):
    from egoqa.work.worker import Served, load_backend_for

    module = types.ModuleType("echo_engine")
    module.Echo = Echo
    monkeypatch.setitem(sys.modules, "echo_engine", module)
    monkeypatch.setitem(registry.ENGINES, "echo", registry.Entry("echo_engine:Echo", "echo"))
    config = RunConfig(model="some-model", backend="echo")
    backend = load_backend_for(Served("e", config.engine(), config), "cpu")
    assert isinstance(backend, Echo) and backend.model == "some-model"


def test_an_unknown_engine_is_refused_by_name():
    with pytest.raises(
        ValueError, match="unknown backend 'vllm': use 'transformers', 'openai' or 'fake'"
    ):
        RunConfig(model="m", backend="vllm")
    with pytest.raises(ConfigError, match="unknown backend 'vllm'"):
        registry.load_backend("vllm")


def test_a_registered_report_table_is_printed_in_its_place(monkeypatch):
    report = {
        "summary": {"run": "r", "graded": True, "ground_truth": False, "oracle": False},
        "by_query_type": [],
        "by_template": [],
        "outcomes": [],
        "answers": [],
        "failures": [],
        "compare": [],
    }
    monkeypatch.setattr(tables, "_summary_table", lambda s: (["metric", "value"], [("queries", 0)]))
    extra = ("notes", lambda rep: [tables.TableSpec("notes", ["note"], [("hello",)])])
    before = [t.title for t in tables.tables(report)]
    monkeypatch.setattr(tables, "TABLES", (*tables.TABLES[:1], extra, *tables.TABLES[1:]))
    after = [t.title for t in tables.tables(report)]
    assert after == [before[0], "notes", *before[1:]]
