"""The README's "By hand" block, run as written against a real devnet, so it cannot drift.

The commands are read from README.md (the first ``sh`` block under "## By hand"),
one line each, comments dropped, and run with ``.venv/bin`` first on ``PATH`` in a
fresh ``DEAI_HOME``, from a scratch folder holding a link to ``examples/``. The
only readings of the text: ``deai devnet up`` keeps its terminal, so it runs in
the background (as in a second terminal) until its "Ctrl-C" line; ``PORT`` is the
port it printed; ``JOB_ID`` is the id the last ``job submit`` printed. Every other
command must exit 0. Then the README's Python snippet runs with the API key the
block minted, and the devnet is stopped with Ctrl-C (SIGINT) and must exit 0.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import LENIENT_HW, ctrl_c_works

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Hardware challenges time the CPU; on a machine whose cores the whole suite shares, an
# honest provider can miss their deadlines and be slashed below the minimum stake.


def block(after: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(after):]
    m = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert m, f"no {lang} block after {after!r}"
    return m.group(1)


def commands() -> list[str]:
    out = []
    for line in block("## By hand", "sh").splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def test_the_block_has_what_the_test_relies_on() -> None:
    cmds = commands()
    assert any(c.startswith("deai devnet up") for c in cmds)
    assert any(c.startswith("export DEAI_COORDINATOR=") and "PORT" in c for c in cmds)
    assert any("JOB_ID" in c for c in cmds)


def _wait_for(proc: subprocess.Popen[str], lines: list[str], pattern: str,
              timeout: float) -> re.Match[str]:
    end = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("devnet up exited:\n" + "".join(lines))
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError("devnet up did not get ready:\n" + "".join(lines))


@pytest.mark.timeout(2400)  # a four-provider devnet, four jobs and the simulator
def test_by_hand_block_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "DEAI_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    for name in ("DEAI_COORDINATOR", "DEAI_KEY"):
        env.pop(name, None)
    env.update(LENIENT_HW)
    devnet: subprocess.Popen[str] | None = None
    devnet_out: list[str] = []
    job_id, api_key, port = "", "", ""
    try:
        for cmd in commands():
            if cmd.startswith("deai devnet up"):
                devnet = subprocess.Popen(shlex.split(cmd, comments=True), cwd=work, env=env,
                                          text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, preexec_fn=ctrl_c_works)
                port = _wait_for(devnet, devnet_out, r"coordinator\s+http://127\.0\.0\.1:(\d+)",
                                 600).group(1)
                _wait_for(devnet, devnet_out, r"Ctrl-C", 600)
                continue
            cmd = cmd.replace("PORT", port).replace("JOB_ID", job_id)
            if cmd.startswith("export "):
                name, _, value = cmd.removeprefix("export ").partition("=")
                env[name] = value
                continue
            p = subprocess.run(shlex.split(cmd, comments=True), cwd=work, env=env, text=True,
                               capture_output=True, timeout=900)
            out = p.stdout + p.stderr
            assert p.returncode == 0, f"`{cmd}` exited {p.returncode}:\n{out}"
            assert "Traceback" not in out, out
            m = re.search(r"submitted job (\S+):", out)
            job_id = m.group(1) if m else job_id
            if "api-key create" in cmd:
                api_key = out.strip().splitlines()[-1]
        assert (work / "loss.png").stat().st_size > 0
        assert (work / "results" / f"{job_id}.jsonl").stat().st_size > 0
        assert api_key.startswith("sk-deai-")

        snippet = block("Then any OpenAI client works", "python").replace(
            "PORT", port).replace("sk-deai-...", api_key)
        p = subprocess.run([sys.executable, "-c", snippet], env=env, text=True,
                           capture_output=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr

        # Out of money: the CLI says how to fund the key.
        assert subprocess.run(["deai", "keys", "new", "broke"], env=env, cwd=work,
                              capture_output=True).returncode == 0
        p = subprocess.run(["deai", "job", "submit", "examples/embeddings.yaml", "--input",
                            "examples/sentences.jsonl", "--key", "broke"], env=env, cwd=work,
                           text=True, capture_output=True, timeout=120)
        assert p.returncode == 1 and "deai faucet" in p.stderr, p.stdout + p.stderr
    finally:
        if devnet is not None:
            devnet.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                rest, _ = devnet.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                devnet.kill()
                rest, _ = devnet.communicate()
            devnet_out.append(rest or "")
    assert devnet.returncode == 0, "".join(devnet_out)
