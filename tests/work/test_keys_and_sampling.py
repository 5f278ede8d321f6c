"""A cached answer is reused only when the job really is the same, and a rerun gives the same
answers: runs re-enqueued after their inputs changed, engines (model + dtype + ...) kept apart,
and sampled jobs whose answers depend on their key alone — on the real tiny Qwen2.5-VL."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.dev.synth import render_clip, write_synth_dataset
from egoqa.store.db import open_db

from conftest import Cli, enqueue_args
from fixtures_model import clip_24s, clip_frames  # noqa: F401
from helpers import rows_as_dicts, running_jobs, wait_until

FAKE = ("--set", "backend=fake")


@pytest.fixture
def data(tmp_path):
    """A private dataset (2 clips x 2 queries of 6 s) that the tests may edit."""
    return write_synth_dataset(tmp_path / "data", clips=2, queries_per_clip=2, duration_sec=6.0)


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """The same shape as `data`, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("shared") / "data"
    return write_synth_dataset(root, clips=2, queries_per_clip=2, duration_sec=6.0)


def results(db_path: Path) -> dict[tuple, dict]:
    with open_db(db_path).read() as cur:
        rows = rows_as_dicts(
            cur,
            "SELECT r.clip_uid, r.annotation_uid, r.query_idx, r.state, r.response, "
            "r.graded_job_id, j.prompt FROM results r JOIN jobs j ON j.id = r.graded_job_id",
        )
    return {(r["clip_uid"], r["annotation_uid"], r["query_idx"]): r for r in rows}


def one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


# --- 4. a run always reports the jobs its current plan computes ---------------------------------


def test_a_style_edited_between_runs_is_refused_then_replanned_with_recompute(tmp_path, data):
    style = tmp_path / "mine.toml"
    shutil.copy(
        Path(__file__).resolve().parents[2] / "egoqa" / "plan" / "styles" / "baseline.toml", style
    )
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    args = enqueue_args(data, "baseline", *FAKE, "--set", f"style={json.dumps(str(style))}")
    cli(*args, "--run", "r")
    cli("work", "--until-done")
    before = results(tmp_path / "egoqa.db")
    text = style.read_text()
    style.write_text(text.replace('template = """', 'template = """Look closely. ', 1))
    assert style.read_text() != text
    line = one_error_line(cli(*args, "--run", "r", check=False))
    assert "different configuration" in line and "template" in line and "--recompute" in line
    assert results(tmp_path / "egoqa.db") == before  # refused: nothing changed
    planned = json.loads(cli(*args, "--run", "r", "--recompute", "--json").stdout)
    assert planned["replanned"] and planned["repointed"] == len(before)
    pending = results(tmp_path / "egoqa.db")
    assert all(r["state"] == "ready" and r["response"] is None for r in pending.values())
    cli("work", "--until-done")
    after = results(tmp_path / "egoqa.db")
    assert all(r["prompt"].startswith("Look closely. ") for r in after.values())
    assert {r["graded_job_id"] for r in after.values()}.isdisjoint(
        r["graded_job_id"] for r in before.values()
    )
    with open_db(tmp_path / "egoqa.db").read() as cur:  # the old answers stay as history
        kept = {r[0] for r in cur.all("SELECT response FROM job_results")}
    assert {r["response"] for r in before.values()} <= kept


def test_a_changed_query_text_or_video_repoints_the_run_at_new_jobs(tmp_path, data):
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    args = enqueue_args(data, "baseline", *FAKE, "--run", "r")
    cli(*args)
    cli("work", "--until-done")
    before = results(tmp_path / "egoqa.db")
    ann = json.loads(Path(data.annotations).read_text())
    first_clip = ann["videos"][0]["clips"][0]
    query = first_clip["annotations"][0]["language_queries"][0]
    query["query"] = "Where did I leave the blue umbrella?"
    Path(data.annotations).write_text(json.dumps(ann))
    planned = json.loads(cli(*args, "--json").stdout)
    assert planned["repointed"] == 1 and planned["replanned"] is None
    now = results(tmp_path / "egoqa.db")
    changed = [k for k in now if now[k]["graded_job_id"] != before[k]["graded_job_id"]]
    assert len(changed) == 1 and now[changed[0]]["response"] is None  # not the old answer
    # a video file re-rendered with other content: every query of its clip moves
    video = Path(data.videos) / f"{first_clip['clip_uid']}.mp4"
    render_clip(video, 6.0, seed=99)
    planned = json.loads(cli(*args, "--json").stdout)
    on_clip = [k for k in now if k[0] == first_clip["clip_uid"]]
    assert planned["repointed"] == len(on_clip) == 2
    cli("work", "--until-done")
    final = results(tmp_path / "egoqa.db")
    assert all(r["state"] == "done" for r in final.values())
    assert "blue umbrella" in final[changed[0]]["prompt"]


# --- 5. the key says how the job was computed, and that is how it is computed --------------------


@pytest.mark.model
@pytest.mark.slow
def test_two_dtypes_of_one_model_run_each_in_their_own(tmp_path, shared_data, tiny_model):
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    model = ("--set", f"model={json.dumps(str(tiny_model))}", "--set", "style=baseline")
    model += ("--set", "generation.do_sample=false")  # greedy: the same answers every session
    for dtype in ("float32", "bfloat16"):
        cli(*enqueue_args(shared_data, "demo", *model, "--set", f"dtype={dtype}", "--run", dtype))
    for _ in range(2):  # each worker serves one engine: the one with most pending jobs
        cli("work", "--until-done")
    with open_db(tmp_path / "egoqa.db").read() as cur:
        rows = cur.all("SELECT j.state, j.dtype, j.spec, j.engine, r.dtype FROM jobs j "
                       "JOIN job_results r ON r.job_id = j.id")  # fmt: skip
        workers = cur.all("SELECT engine FROM workers")
    assert rows and all(state == "done" for state, *_ in rows)
    ran = {
        (json.loads(spec)["engine"]["dtype"], dtype, rdtype) for _, dtype, spec, _, rdtype in rows
    }
    assert ran == {("float32", "float32", "float32"), ("bfloat16", "bfloat16", "bfloat16")}
    assert len({r[3] for r in rows}) == 2 and len({w[0] for w in workers}) == 2


def test_the_models_revision_reaches_from_pretrained(tiny_model, monkeypatch):
    import transformers

    from egoqa.plan.config import RunConfig
    from egoqa.work.worker import load_backend_for, served_from_config

    seen = []
    for cls in (transformers.AutoProcessor, transformers.AutoModelForImageTextToText):
        real = cls.from_pretrained.__func__

        def spy(klass, path, *a, _real=real, **kw):
            seen.append((klass.__name__, kw.get("revision")))
            return _real(klass, path, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    config = RunConfig(model=str(tiny_model), revision="v1.2", dtype="float32")
    backend = load_backend_for(served_from_config(config), "cpu")
    assert backend.dtype == "float32"
    assert sorted(seen) == [("AutoModelForImageTextToText", "v1.2"), ("AutoProcessor", "v1.2")]


def test_engines_this_machine_cannot_run_are_refused_in_one_line(tmp_path, shared_data, tiny_model):
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    model = ("--set", f"model={json.dumps(str(tiny_model))}", "--set", "style=baseline")
    cli(*enqueue_args(shared_data, "demo", *model, "--set", "quantization=nf4", "--run", "q"))
    line = one_error_line(cli("work", "--device", "cpu", "--until-done", check=False))
    assert "nf4" in line and "CUDA" in line
    from egoqa.errors import ModelLoadError
    from egoqa.plan.config import load_config
    from egoqa.work.worker import load_backend_for, served_from_config

    flash = load_config(
        "demo", [f"model={json.dumps(str(tiny_model))}", "attn_implementation=flash_attention_2"]
    )
    with pytest.raises(ModelLoadError, match=r"flash_attention_2.*sdpa"):
        load_backend_for(served_from_config(flash), "cpu")


# --- 6. sampling is reproducible per job ------------------------------------------------------------


def _sampled(frames, seeds):
    from egoqa.backends.base import Request
    from egoqa.plan.config import GenerationConfig

    settings = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.2)
    prompts = ["Where is the bag?", "What did I cut?", "Who did I talk to?", "Stages?"]
    return [
        Request(i, prompts[i], frames if i % 2 else None, 2, settings, seed=seeds[i])
        for i in range(4)
    ]


@pytest.mark.model
def test_a_sampled_request_draws_the_same_text_alone_in_a_batch_and_in_any_order(
    tiny_model,
    clip_24s,  # noqa: F811
):
    from egoqa.backends.transformers import TransformersBackend
    from egoqa.plan.config import SamplerConfig

    frames = clip_frames(clip_24s, SamplerConfig(frames=8, max_edge=112))
    backend = TransformersBackend(str(tiny_model), device="cpu", dtype="float32")
    for seeds in ([11, 22, 33, 44], [7, 7, 7, 7]):  # distinct seeds, and one shared by all
        requests = _sampled(frames, seeds=seeds)
        batched = [r.texts for r in backend.generate(requests)]
        reversed_ = [r.texts for r in backend.generate(requests[::-1])][::-1]
        alone = [backend.generate([r])[0].texts for r in requests]
        assert batched == reversed_ == alone, seeds
    requests = _sampled(frames, seeds=[11, 22, 33, 44])
    batched = [r.texts for r in backend.generate(requests)]
    assert all(len(set(t)) == 2 for t in batched), "two samples of a job should differ"
    reseeded = backend.generate([_sampled(frames, seeds=[12, 22, 33, 44])[0]])
    assert reseeded[0].texts != batched[0]


def _worker_answers(db_path: Path) -> dict[str, list[str]]:
    with open_db(db_path).read() as cur:
        rows = cur.all("SELECT key, responses FROM jobs")
    return {k: json.loads(r) if r else None for k, r in rows}


@pytest.mark.model
@pytest.mark.slow
def test_sampled_answers_do_not_depend_on_batch_size_an_out_of_memory_split_or_claiming_ahead(
    tmp_path, tiny_model, monkeypatch
):
    """The real worker path, in process, on the sampling `demo` preset (5-sample turns); with
    batches of 2, the next batch is claimed and prepared while one generates. (Answers of 12
    tokens, not the preset's 24: every token drawn is compared all the same, and decode steps
    are most of the time.)"""
    from egoqa.plan.config import load_config
    from egoqa.plan.dataset import load_nlq
    from egoqa.plan.planner import enqueue_run
    from egoqa.plan.styles import load_style
    from egoqa.work.worker import Worker, WorkerOptions, load_backend_for, resolve_engine

    data = write_synth_dataset(tmp_path / "d", clips=2, queries_per_clip=2, duration_sec=8.0)
    config = load_config(
        "demo", [f"model={json.dumps(str(tiny_model))}", "generation.max_new_tokens=12"]
    )
    assert config.generation.do_sample
    backend = None
    answers = {}
    runs = (("one", 1, None, False), ("four", 4, None, False), ("split", 4, 1, False))
    for name, size, oom_above, ahead in (*runs, ("ahead", 2, None, True)):
        db = open_db(tmp_path / f"{name}.db", create=True)
        enqueue_run(
            db, load_nlq(data.annotations, data.videos), config, load_style("stage_analysis"), "r"
        )
        served = resolve_engine(db)
        backend = backend or load_backend_for(served, "cpu")
        if oom_above:
            monkeypatch.setenv("EGOQA_INJECT_OOM_ABOVE", str(oom_above))
        options = WorkerOptions(batch_size=size, until_done=True, claim_ahead=ahead)
        stats = Worker(db, served, backend, options).run()
        monkeypatch.delenv("EGOQA_INJECT_OOM_ABOVE", raising=False)
        # the tiny model answers every job (`min_new_tokens`): nothing fails in any run
        assert stats.failed == 0 and (stats.oom_splits > 0) == bool(oom_above)
        # the tiny model is keyed by its content, so its outcomes are the same in every session:
        # with batches of 2 there is always a next batch to claim ahead
        assert (stats.claimed_ahead > 0) == ahead, stats
        answers[name] = (stats.failed, _worker_answers(tmp_path / f"{name}.db"))
    assert answers["one"] == answers["four"] == answers["split"] == answers["ahead"]
    assert any(v and len(set(v)) > 1 for v in answers["one"][1].values()), "nothing was sampled"


@pytest.mark.model
@pytest.mark.slow
def test_workers_killed_mid_run_give_the_same_sampled_answers_as_an_uninterrupted_run(
    tmp_path, tiny_model
):
    data = write_synth_dataset(tmp_path / "d", clips=3, queries_per_clip=2, duration_sec=8.0)
    # answers of 12 tokens, not the demo preset's 24: each is compared whole all the same
    model = (
        "--set",
        f"model={json.dumps(str(tiny_model))}",
        "--set",
        "generation.max_new_tokens=12",
    )
    calm = InProcess(tmp_path / "calm.db", tmp_path)
    calm(*enqueue_args(data, "demo", *model))
    calm("work", "--until-done")
    reference = _worker_answers(tmp_path / "calm.db")

    chaos = InProcess(tmp_path / "chaos.db", tmp_path)
    chaos(*enqueue_args(data, "demo", *model))
    victims = Cli(tmp_path / "chaos.db", tmp_path)  # only the workers killed are processes
    db = open_db(tmp_path / "chaos.db")
    # a lease long enough that no live worker loses one on a busy machine (a lost lease costs an
    # attempt); the dead workers' jobs are released at once, whatever their lease. Two workers of
    # different batch sizes, killed together while they hold a batch
    procs = [victims.popen("work", "--lease", "60", "--batch-size", str(n)) for n in (1, 4)]
    # until the workers have finished some jobs and hold the next batch
    wait_until(lambda: _count(db, "done") >= 2 and running_jobs(db), 180, "jobs done and held")
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    held_at_kill = running_jobs(db)  # jobs the dead held, left for the reaper
    chaos("work", "--until-done")  # reaps what the dead held
    # every answer as the calm run drew it, every job done in both runs
    assert held_at_kill > 0  # the kill landed mid-batch
    assert _count(db, "done") == _count(open_db(tmp_path / "calm.db"), "done") == _count(db)
    assert _worker_answers(tmp_path / "chaos.db") == reference


def _count(db, state: str | None = None) -> int:
    """The jobs in `state`, or all of them."""
    with db.read() as cur:
        if state is None:
            return cur.one("SELECT COUNT(*) FROM jobs")
        return cur.one("SELECT COUNT(*) FROM jobs WHERE state = :s", {"s": state})
