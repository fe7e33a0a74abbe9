"""`atelier jobs ...` against a small stand-in of the Atelier API on loopback, as the CLI's
save-as-image tests do: what each command sends, what it prints, and its refusals."""

from __future__ import annotations

import json

import pytest
from standin import API, FakeAtelier, refusal, serve

from atelier.hub.cli import jobs
from atelier.hub.cli.main import main

TORCH = "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"


def job(status="pending", name="ddp", owner="alice", **more) -> dict:
    """A job as the API shows it."""
    return {
        "id": "j1",
        "owner": owner,
        "name": name,
        "status": status,
        "reason": None,
        "image": TORCH,
        "spec": "cpu.2u8g",
        "volume": "lab",
        "argv": ["train.py", "--steps=20", "--lr=0.1"],
        "python": True,
        "nodes": 2,
        "processes_per_node": 2,
        "environment": {"SEED": "1"},
        "inputs": ["data/a"],
        "output": "jobs/ddp",
        "retries": 1,
        "time_limit_minutes": None,
        "world_size": 4,
        "attempt": 0,
        "restarts": 0,
        "checkpoint_step": None,
        "devices": [],
        "created": "2026-01-01T00:00:00+00:00",
        "started": None,
        "ended": None,
        **more,
    }


class JobsAtelier(FakeAtelier):
    def sent(self) -> list[tuple[str, str, object]]:
        """What the CLI asked, but who it is (GET /quotas)."""
        return [
            (s.method, s.path.removeprefix(API), s.body)
            for s in self.seen
            if s.path != API + "/quotas"
        ]


@pytest.fixture(scope="module")
def stand_in():
    fake = JobsAtelier(prefix=API)
    server = serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def atelier_api(stand_in):
    stand_in.answers.clear()
    stand_in.seen.clear()
    stand_in.answer("GET", "/quotas", (200, {"user": "alice"}))  # who the token is
    return stand_in


@pytest.fixture
def cli(capsys, atelier_api, monkeypatch):
    for name in ("ATELIER_API_URL", "ATELIER_INSTANCE", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_USER"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        # the API options first: everything after --command is the command's
        action, *rest = argv
        code = main(["jobs", action, "--url", atelier_api.url, "--token", "alice-token", *rest])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# submit -----------------------------------------------------------------------------------------
def test_submit_sends_every_option_given_and_prints_the_status_line(cli, atelier_api):
    atelier_api.answer("POST", "/jobs", (201, job()))
    code, out, err = cli(
        "submit", "ddp", "--image", TORCH, "--spec", "cpu.2u8g", "--volume", "lab",
        "--script", "train.py", "--nodes", "2", "--processes-per-node", "2",
        "--arg=--steps=20", "--arg", "fast",
        "--hyperparameter", "lr=0.1", "--hyperparameter", "epochs=3",
        "--hyperparameter", "optimizer=adamw", "--hyperparameter", "note=a=b",
        "--env", "SEED=1", "--env", "MODE=", "--input", "data/a", "--input", "data/b",
        "--output", "out/ddp", "--retries", "2", "--time-limit-minutes", "90",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out == "job alice/ddp is pending\n"
    assert atelier_api.sent() == [
        (
            "POST",
            "/jobs",
            {
                "name": "ddp",
                "image": TORCH,
                "spec": "cpu.2u8g",
                "volume": "lab",
                "script": "train.py",
                "args": ["--steps=20", "fast"],
                "hyperparameters": {"lr": 0.1, "epochs": 3, "optimizer": "adamw", "note": "a=b"},
                "nodes": 2,
                "processes_per_node": 2,
                "environment": {"SEED": "1", "MODE": ""},
                "inputs": ["data/a", "data/b"],
                "output": "out/ddp",
                "retries": 2,
                "time_limit_minutes": 90,
            },
        )
    ]
    assert atelier_api.seen[0].method == "POST"  # no need to ask who the token is


def test_submit_sends_only_what_is_given_and_a_command_is_everything_after_it(cli, atelier_api):
    atelier_api.answer("POST", "/jobs", (201, job(name="sweep", owner="bob")))
    code, out, _ = cli(
        "submit", "sweep", "--image", TORCH, "--spec", "cpu.2u8g", "--owner", "bob",
        "--command", "python", "-m", "sweep", "--lr", "0.1", "--owner", "x",
    )  # fmt: skip
    assert code == 0 and out == "job bob/sweep is pending\n"
    [(_, _, body)] = atelier_api.sent()
    # the volume is null outside an instance: the API names it as the field at fault
    assert body == {
        "name": "sweep",
        "image": TORCH,
        "spec": "cpu.2u8g",
        "volume": None,
        "command": ["python", "-m", "sweep", "--lr", "0.1", "--owner", "x"],
        "owner": "bob",
    }


@pytest.mark.parametrize(
    "text, value",
    [
        ("0.1", 0.1),
        ("20", 20),
        ("-3", -3),
        ("1e-3", 0.001),
        ("2.5E2", 250.0),
        ("adamw", "adamw"),
        ("true", "true"),  # the script gets --flag=true, not Python's True
        ("007", "007"),
        ("1_000", "1_000"),
        (" 1", " 1"),
        ("nan", "nan"),
        ("1e999", "1e999"),  # not a finite number: JSON has no infinity
        ("", ""),
    ],
)
def test_hyperparameter_values_that_read_as_numbers_are_sent_as_numbers(text, value):
    converted = jobs.number_or_text(text)
    assert converted == value and type(converted) is type(value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ("--script", "t.py", "--hyperparameter", "lr"),
            "atelier: --hyperparameter: 'lr' is not key=value\n",
        ),
        (("--script", "t.py", "--env", "=1"), "atelier: --env: '=1' is not key=value\n"),
        (
            ("--script", "t.py", "--command", "python"),
            "atelier: `atelier jobs submit` needs either --script PATH (a .py file on the "
            "volume) or --command PROGRAM [ARG ...] (last: everything after it is the command)\n",
        ),
        (
            (),
            "atelier: `atelier jobs submit` needs either --script PATH (a .py file on the "
            "volume) or --command PROGRAM [ARG ...] (last: everything after it is the command)\n",
        ),
        (("--command",), "atelier: --command: name the program to run, then its arguments\n"),
    ],
)
def test_a_malformed_submit_is_refused_in_one_line_before_any_request(
    cli, atelier_api, argv, message
):
    code, out, err = cli("submit", "ddp", "--image", TORCH, "--spec", "cpu.2u8g", *argv)
    assert (code, out, err) == (2, "", message)
    assert atelier_api.seen == []


def test_submit_needs_an_image_and_a_spec(cli, atelier_api):
    code, _, err = cli("submit", "ddp", "--spec", "cpu.2u8g", "--script", "t.py")
    assert (code, err) == (2, "atelier: `atelier jobs submit` needs --image and --spec\n")
    assert atelier_api.seen == []


def test_a_refusal_of_the_api_is_one_line_naming_the_field(cli, atelier_api):
    answer = refusal("invalid", "must be the path of a .py file on the volume", "script")
    atelier_api.answer("POST", "/jobs", (400, answer))
    code, out, err = cli("submit", "ddp", "--image", TORCH, "--spec", "s", "--script", "t.sh")
    assert (code, out) == (2, "")
    assert err == "atelier: 400 invalid: script: must be the path of a .py file on the volume\n"


SUBMIT = ("submit", "ddp", "--image", TORCH, "--spec", "cpu.2u8g", "--script", "train.py")


def test_submit_wait_prints_the_end_and_exits_0_when_it_completed(cli, atelier_api, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    atelier_api.answer("POST", "/jobs", (201, job()))
    atelier_api.answer(
        "GET",
        "/jobs/alice/ddp",
        (200, job("running", attempt=1)),
        (200, job("completed", attempt=1, checkpoint_step=20)),
    )
    code, out, _ = cli(*SUBMIT, "--wait")
    assert code == 0
    assert out.splitlines() == [
        "job alice/ddp is pending",
        "job alice/ddp is completed (attempt 1, checkpoint step 20)",
    ]


@pytest.mark.parametrize(
    "status, reason",
    [("failed", "rank 3 exited 137 (SIGKILL)"), ("stopped", "stop asked by alice")],
)
def test_submit_wait_exits_2_naming_why_a_job_did_not_complete(cli, atelier_api, status, reason):
    atelier_api.answer("POST", "/jobs", (201, job()))
    atelier_api.answer("GET", "/jobs/alice/ddp", (200, job(status, reason=reason, attempt=1)))
    code, out, err = cli(*SUBMIT, "--wait")
    assert (code, out) == (2, "job alice/ddp is pending\n")
    assert err == f"atelier: job alice/ddp {status}: {reason}\n"


def test_submit_follow_prints_rank_0s_log_then_how_it_ended(cli, atelier_api):
    atelier_api.answer("POST", "/jobs", (201, job(owner="bob")))
    atelier_api.answer("GET", "/jobs/bob/ddp/logs", (200, "step 1 loss 0.9\nstep 2 loss 0.5\n"))
    atelier_api.answer("GET", "/jobs/bob/ddp", (200, job("completed", owner="bob", attempt=1)))
    code, out, _ = cli(*SUBMIT, "--owner", "bob", "--follow")
    assert code == 0
    assert out.splitlines() == [
        "job bob/ddp is pending",
        "step 1 loss 0.9",
        "step 2 loss 0.5",
        "job bob/ddp is completed (attempt 1)",
    ]
    logs = next(s for s in atelier_api.seen if s.path.endswith("/logs"))
    assert logs.query == {"rank": "0", "follow": "1"}


def test_submit_json_prints_the_job(cli, atelier_api):
    atelier_api.answer("POST", "/jobs", (201, job()))
    code, out, _ = cli(*SUBMIT, "--json")
    assert code == 0 and json.loads(out) == job()


# list, show, events, metrics --------------------------------------------------------------------
def test_list_is_a_table_of_status_ranks_attempt_restarts_checkpoint_and_created(cli, atelier_api):
    listed = [
        job("running", "ddp", attempt=2, restarts=1, checkpoint_step=40),
        job("failed", "old", nodes=1, processes_per_node=4, reason="rank 1 exited 1", attempt=1),
    ]
    atelier_api.answer("GET", "/jobs", (200, {"jobs": listed}))
    code, out, _ = cli("list")
    assert code == 0
    header, *rows = [line.split() for line in out.splitlines()]
    assert header == ["NAME", "STATUS", "RANKS", "ATTEMPT", "RESTARTS", "CHECKPOINT", "CREATED"]
    assert rows == [
        ["ddp", "running", "2x2", "2", "1", "40", "2026-01-01T00:00:00+00:00"],
        ["old", "failed", "1x4", "1", "0", "2026-01-01T00:00:00+00:00"],  # no checkpoint
    ]
    assert atelier_api.seen[0].query == {}  # the token's own


def test_an_admins_list_of_several_owners_names_each_owner(cli, atelier_api):
    listed = [job(owner="alice"), job(owner="bob")]
    atelier_api.answer("GET", "/jobs", (200, {"jobs": listed}))
    code, out, _ = cli("list")
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["OWNER", "NAME"],
        ["alice", "ddp"],
        ["bob", "ddp"],
    ]
    atelier_api.answer("GET", "/jobs", (200, {"jobs": []}))
    assert cli("list", "--owner", "carol")[1] == "(none)\n"
    assert atelier_api.seen[-1].query == {"owner": "carol"}
    atelier_api.answer("GET", "/jobs", (200, {"jobs": listed}))
    assert json.loads(cli("list", "--json")[1]) == listed


EVENTS = [
    {"time": "2026-01-01T00:00:00+00:00", "message": "queued"},
    {"time": "2026-01-01T00:00:02+00:00", "message": "started: 2 node(s) x 2 process(es), gloo"},
]


def test_show_prints_the_job_then_its_events(cli, atelier_api):
    shown = job(
        "running",
        owner="bob",
        attempt=1,
        checkpoint_step=10,
        time_limit_minutes=90,
        devices=[{"kind": "gpu", "type": "a100", "index": 0}],
        started="2026-01-01T00:00:02+00:00",
    )
    atelier_api.answer("GET", "/jobs/bob/ddp", (200, shown))
    atelier_api.answer("GET", "/jobs/bob/ddp/events", (200, {"events": EVENTS}))
    code, out, _ = cli("show", "ddp", "--owner", "bob")
    assert code == 0
    assert out.splitlines() == [
        "job bob/ddp is running (attempt 1, checkpoint step 10)",
        f"  image:       {TORCH}",
        "  spec:        cpu.2u8g",
        "  volume:      lab",
        "  runs:        train.py --steps=20 --lr=0.1",
        "  ranks:       2 node(s) x 2 process(es), world size 4",
        "  environment: SEED=1",
        "  inputs:      data/a",
        "  output:      jobs/ddp",
        "  retries:     1",
        "  time limit:  90 minutes",
        "  devices:     a100:0",
        "  created:     2026-01-01T00:00:00+00:00",
        "  started:     2026-01-01T00:00:02+00:00",
        "  ended:",
        "events:",
        "TIME                       MESSAGE",
        "2026-01-01T00:00:00+00:00  queued",
        "2026-01-01T00:00:02+00:00  started: 2 node(s) x 2 process(es), gloo",
    ]
    code, out, _ = cli("show", "ddp", "--owner", "bob", "--json")
    assert json.loads(out) == {**shown, "events": EVENTS}


def test_a_failed_jobs_reason_follows_its_status(cli, atelier_api):
    failed = job("failed", reason="rank 3 exited 137 (SIGKILL)", attempt=2, restarts=1)
    atelier_api.answer("GET", "/jobs/alice/ddp", (200, failed))
    atelier_api.answer("GET", "/jobs/alice/ddp/events", (200, {"events": []}))
    out = cli("show", "ddp")[1]
    assert out.splitlines()[0] == (
        "job alice/ddp is failed (attempt 2, 1 restart(s)): rank 3 exited 137 (SIGKILL)"
    )


def test_an_unknown_job_is_one_line(cli, atelier_api):
    atelier_api.answer("GET", "/jobs/alice/nope", (404, refusal("not_found", "no job alice/nope")))
    assert cli("show", "nope") == (2, "", "atelier: 404 not_found: no job alice/nope\n")


def test_events_is_a_table(cli, atelier_api):
    atelier_api.answer("GET", "/jobs/alice/ddp/events", (200, {"events": EVENTS}))
    code, out, _ = cli("events", "ddp")
    assert code == 0 and out.splitlines()[2].endswith("started: 2 node(s) x 2 process(es), gloo")
    assert json.loads(cli("events", "ddp", "--json")[1]) == EVENTS


def test_metrics_shows_each_series_newest_value_and_the_usage(cli, atelier_api):
    metrics = {
        "series": {"loss": [[1, 0.9], [2, 0.5], [3, 0.25]], "accuracy": [[3, 0.75]], "none": []},
        "usage": {"cpu_seconds": 12.345, "memory_bytes": 3 * 2**29},
        "checkpoint_step": 2,
    }
    atelier_api.answer("GET", "/jobs/alice/ddp/metrics", (200, metrics))
    code, out, _ = cli("metrics", "ddp")
    assert code == 0
    assert out.splitlines() == [
        "SERIES    STEP  VALUE",
        "loss      3     0.25",
        "accuracy  3     0.75",
        "checkpoint step: 2",
        "cpu_seconds: 12.3",
        "memory: 1.50 GiB",
    ]
    assert json.loads(cli("metrics", "ddp", "--json")[1]) == metrics
    empty = {"series": {}, "usage": {}, "checkpoint_step": None}
    atelier_api.answer("GET", "/jobs/alice/ddp/metrics", (200, empty))
    assert cli("metrics", "ddp")[1] == (
        "no metrics logged yet (a rank logs them with atelier.training.log_metrics)\n"
    )


# logs, stop, resume, delete ---------------------------------------------------------------------
def test_logs_of_a_rank_and_its_tail(cli, atelier_api):
    atelier_api.answer("GET", "/jobs/alice/ddp/logs", (200, "step 9\nstep 10\n"))
    assert cli("logs", "ddp", "--rank", "3", "--tail", "2") == (0, "step 9\nstep 10\n", "")
    assert atelier_api.seen[-1].query == {"rank": "3", "tail": "2"}
    assert cli("logs", "ddp", "--follow")[1] == "step 9\nstep 10\n"
    assert atelier_api.seen[-1].query == {"rank": "0", "follow": "1"}


def test_logs_tail_and_follow_do_not_go_together(cli, atelier_api):
    code, _, err = cli("logs", "ddp", "--tail", "5", "--follow")
    assert code == 2 and err.startswith("atelier: --tail and --follow do not go together")
    assert atelier_api.seen == []


def test_logs_removed_after_retention_are_one_line(cli, atelier_api):
    gone = refusal("gone", "its logs were removed 30 days after it ended")
    atelier_api.answer("GET", "/jobs/alice/ddp/logs", (410, gone))
    assert cli("logs", "ddp") == (
        2,
        "",
        "atelier: 410 gone: its logs were removed 30 days after it ended\n",
    )


def test_stop_resume_and_delete(cli, atelier_api):
    atelier_api.answer("POST", "/jobs/alice/ddp/stop", (202, job("running")))
    atelier_api.answer("POST", "/jobs/bob/ddp/resume", (202, job(owner="bob", checkpoint_step=40)))
    atelier_api.answer("DELETE", "/jobs/alice/ddp", (204, ""))
    assert cli("stop", "ddp") == (0, "job alice/ddp is running\n", "")
    assert cli("resume", "ddp", "--owner", "bob")[1] == (
        "job bob/ddp is pending (checkpoint step 40)\n"
    )
    assert cli("delete", "ddp")[1] == "deleted job ddp with its logs and metrics\n"
    assert [(method, path) for method, path, _ in atelier_api.sent()] == [
        ("POST", "/jobs/alice/ddp/stop"),
        ("POST", "/jobs/bob/ddp/resume"),
        ("DELETE", "/jobs/alice/ddp"),
    ]
    conflict = refusal("conflict", "the job is completed already", "status")
    atelier_api.answer("POST", "/jobs/alice/ddp/stop", (409, conflict))
    assert cli("stop", "ddp")[2] == "atelier: 409 conflict: status: the job is completed already\n"


# following a quiet log --------------------------------------------------------------------------
class QuietLog:
    """A stand-in client whose followed log times out (as a read does while a job waits for
    devices) after the lines of each attempt but the last."""

    def __init__(self, *attempts: list[str]):
        self.attempts = list(attempts)
        self.calls = []

    def follow_job_logs(self, name, rank=0, owner=None):
        self.calls.append((name, rank, owner))
        lines = self.attempts.pop(0)
        yield from lines
        if self.attempts:
            raise TimeoutError("timed out")


def test_a_followed_log_that_times_out_is_followed_again_without_repeating_lines(capsys):
    client = QuietLog(["a\n"], ["a\n", "b\n"], ["a\n", "b\n", "c\n"])
    jobs.stream(client, "ddp", 1, "bob")
    assert capsys.readouterr().out == "a\nb\nc\n"
    assert client.calls == [("ddp", 1, "bob")] * 3
