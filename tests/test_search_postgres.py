"""Two search workers on one study in a real PostgreSQL server: every trial recorded once, none lost.

The test starts a throwaway server (initdb and pg_ctl on a free local port, as an unprivileged user since
PostgreSQL refuses to run as root: the `postgres` user the package creates, or a `wattless-pg` user made
for the test and removed after) and removes everything afterwards. Skipped, saying why, only where the
server binaries or the psycopg2 driver are absent; `.ci/run` installs both.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.test_search import CLI, SPEC, STUDY, seed_file


def _binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return shutil.which(name) or (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> tuple[int | None, int | None, str | None]:
    """(uid, gid, user created here) to run the server as: the current user unless it is root."""
    if os.geteuid() != 0:
        return None, None, None
    for name in ("postgres", "wattless-pg"):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid, None
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "wattless-pg"],
                   check=True, capture_output=True)
    entry = pwd.getpwnam("wattless-pg")
    return entry.pw_uid, entry.pw_gid, "wattless-pg"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pytest.importorskip("psycopg2", reason="the psycopg2 driver is not installed: pip install psycopg2-binary")
    uid, gid, created = _server_user()
    root = Path(tempfile.mkdtemp(prefix="wattless-pg-", dir="/tmp"))
    if uid is not None:
        os.chown(root, uid, gid)
    as_server = {"user": uid, "group": gid} if uid is not None else {}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "LC_ALL": "C"}
    port, data = _free_port(), root / "data"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(args, check=check, capture_output=True, text=True, cwd=root, env=env, timeout=120,
                              **as_server)

    try:
        run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
        run(pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {root}", "start")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
        if created:
            subprocess.run(["userdel", created], check=False, capture_output=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    seed = seed_file(tmp_path, epochs=8)
    folders = [tmp_path / "a", tmp_path / "b"]

    def command(out: Path, target: str = "mobile-npu") -> list[str]:
        return [sys.executable, "-c", CLI, "search", "--workload", SPEC, "--target", target, "--out", str(out),
                "--storage", postgres_url, "--trials", "6", "--epochs", "8", "--seed-recipe", str(seed),
                "--energy-inputs", "4", "--no-progress"]

    procs = [subprocess.Popen(command(out), env={**os.environ, "WATTLESS_CACHE": str(out.parent / f"cache-{out.name}"), "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for out in folders]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name=STUDY, storage=postgres_url)
    trials = study.trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # one record per trial
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)  # none left running or waiting
    assert 6 <= len(trials) <= 7  # the budget; two workers may both start the last one
    ran = [{int(p.name) for p in (out / "trials").iterdir()} for out in folders]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both worked, never on the same trial
    assert ran[0] | ran[1] == set(numbers)  # none lost
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {p.pid for p in procs}
    assert sum(t.user_attrs.get("seed") == "tiny-seed" for t in trials) == 1
    for t in trials:
        if t.state.name == "COMPLETE":
            assert t.user_attrs["point"]["energy_j"]["mobile-npu"] == t.values[1]
    assert all(json.loads((out / "results.json").read_text())["frontier"] for out in folders)

    # a folder holding this study, asked for another: exit 2, the study in PostgreSQL untouched
    before = [(t.number, t.state, t.values, t.datetime_complete) for t in trials]
    refused = subprocess.run(command(folders[0], target="cortex-m4"), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "holds the search of study" in refused.stderr
    after = optuna.load_study(study_name=STUDY, storage=postgres_url).trials
    assert [(t.number, t.state, t.values, t.datetime_complete) for t in after] == before
    assert optuna.get_all_study_names(postgres_url) == [STUDY]
