"""One writer per run folder: a second `fspo-data run` (or a `report`) on a folder a run holds
is refused in one line naming the holder, and changes nothing; the first finishes whole; a
run killed with SIGKILL never blocks its own resume."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fspo_data.core.shards import file_sha256
from tests.backends.fake_openai_server import FakeOpenAIServer
from tests.reliability.conftest import (
    assert_run_is_whole,
    kill_session,
    openai_config,
    run_cli,
    start_job,
    write_config,
)


class GatedServer(FakeOpenAIServer):
    """The fake endpoint, holding every call while `gate` is shut: a run that reached its
    first model call stays in the middle of its work for as long as the test likes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def begin_call(self, body: dict[str, Any], auth: str) -> None:
        fault = super().begin_call(body, auth)
        self.gate.wait(timeout=300)
        return fault


def wait_for_calls(server: FakeOpenAIServer, job) -> None:
    """Until the job makes its first model call: it holds the folder and is mid-run."""
    deadline = time.monotonic() + 300
    while not server.counters.calls:
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job made no model call"
        time.sleep(0.05)


def folder_state(run_dir: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, file_sha256(p))
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


HOLDER = re.compile(
    r"^error: (?P<dir>\S+) is in use by another fspo-data run or report "
    r"\(host (?P<host>\S+), pid (?P<pid>\d+), since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); "
    r"wait for it to end or stop it\n$"
)


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused_and_the_first_finishes(tmp_path):
    with GatedServer() as server:
        config = openai_config(tmp_path / "run", server.base_url)
        config_path = write_config(tmp_path / "job.yaml", config)
        first = start_job(["run", str(config_path), "--quiet"])
        try:
            wait_for_calls(server, first)
            before = folder_state(config.run_dir)
            for command in (["run", str(config_path), "--quiet"], ["report", str(config.run_dir)]):
                code, err = run_cli(*command, timeout=120)
                assert code == 2, err
                refused = HOLDER.match(err)
                assert refused, err
                assert refused["dir"] == str(config.run_dir)
                assert (refused["host"], int(refused["pid"])) == (socket.gethostname(), first.pid)
            assert folder_state(config.run_dir) == before  # nothing changed

            server.gate.set()
            _, err = first.communicate(timeout=300)
            assert first.returncode == 0, err
        finally:
            kill_session(first)
    assert_run_is_whole(config.run_dir, config)


@pytest.mark.slow
def test_a_killed_run_never_blocks_its_resume(tmp_path):
    with GatedServer() as server:
        config = openai_config(tmp_path / "run", server.base_url)
        config_path = write_config(tmp_path / "job.yaml", config)
        job = start_job(["run", str(config_path), "--quiet"])
        try:
            wait_for_calls(server, job)
        finally:
            kill_session(job)  # SIGKILL, the driver and its Ray processes, mid-run
        server.gate.set()
        code, err = run_cli("run", str(config_path), "--quiet")  # at once, no wait
        assert code == 0, err
    assert_run_is_whole(config.run_dir, config)
