"""A local model is keyed by its content: the same weights elsewhere share the cache, new weights
in the same directory miss it, and a worker refuses jobs keyed by weights no longer there."""

from __future__ import annotations

import json
import shutil

import pytest
from inproc import InProcess

from egoqa.backends.modelpath import check_weights
from egoqa.errors import EgoqaError
from egoqa.plan.fingerprint import model_fingerprint
from egoqa.store.db import open_db

from conftest import enqueue_args

pytestmark = pytest.mark.model

# The tiny model built with seed 0 (`egoqa dev tiny-model`) is the same bytes whenever it is built
# with the same libraries, so its fingerprint, its keys and its sampled answers are too. The
# fingerprint itself is not pinned: a transformers release writes its version into config.json.


def keys(db_path) -> set[str]:
    with open_db(db_path).read() as cur:
        return {k for (k,) in cur.all("SELECT key FROM jobs")}


def enqueue(run, synth, model, name):
    model_set = f"model={json.dumps(str(model))}"
    return run(*enqueue_args(synth, "demo", "--set", model_set, "--run", name))


def test_the_tiny_models_build_is_the_same_bytes_every_time(tiny_model, tmp_path):
    from egoqa.dev.tinymodel import build_tiny_model

    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert model_fingerprint(again) == model_fingerprint(tiny_model)
    assert model_fingerprint(other) != model_fingerprint(tiny_model)


def test_the_same_weights_in_another_directory_share_the_cache(
    tiny_model, synth, tmp_path, migrated_db_path
):
    db_path = migrated_db_path
    copy = shutil.copytree(tiny_model, tmp_path / "elsewhere" / "copy")
    run = InProcess(db_path, tmp_path)
    enqueue(run, synth, tiny_model, "a")
    first = keys(db_path)
    enqueue(run, synth, copy, "b")
    assert first and keys(db_path) == first


def test_new_weights_in_the_same_directory_miss_the_cache_and_old_jobs_are_refused(
    tiny_model, synth, tmp_path, migrated_db_path
):
    db_path = migrated_db_path
    model = shutil.copytree(tiny_model, tmp_path / "model")
    run = InProcess(db_path, tmp_path)
    enqueue(run, synth, model, "a")
    before = keys(db_path)
    with open_db(db_path).read() as cur:
        spec = cur.one("SELECT spec FROM jobs LIMIT 1")
    engine = json.loads(spec)["engine"]
    check_weights(engine)  # the weights it was keyed by: served

    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1000:] = bytes(b ^ 0xFF for b in data[-1000:])  # retrained: the last tensor's values
    weights.write_bytes(bytes(data))

    with pytest.raises(EgoqaError, match="changed since these jobs were enqueued"):
        check_weights(engine)
    enqueue(run, synth, model, "b")
    after = keys(db_path)
    assert before < after and len(after) == 2 * len(before)


def test_a_hub_id_has_no_fingerprint_and_keeps_its_name_in_the_key():
    from egoqa.plan.config import RunConfig

    engine = RunConfig(model="Qwen/Qwen2.5-VL-7B-Instruct").engine()
    assert "weights" not in engine and engine["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
