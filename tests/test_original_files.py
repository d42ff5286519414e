"""Reads of the original's files, as the kernel reports them (fanotify), attributed to the program a
process runs now; the endpoint-answer comparison of ``whole``; signal dispositions from procfs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from redline.judge.examine import served_by_endpoint
from redline.judge.original_files import OriginalFiles
from redline.sandbox import procfs


def _folder(tmp_path) -> str:
    folder = tmp_path / "assistant"
    (folder / "agent" / "__pycache__").mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "logs").mkdir()
    (folder / "llm_server.py").write_text("print(1)\n")
    (folder / "agent" / "__main__.py").write_text("x = 1\n")
    (folder / "model" / "w.gguf").write_bytes(b"0" * 4096)
    (folder / "config.json").write_text("{}")
    return str(folder)


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _ready(process: subprocess.Popen) -> str:
    return process.stdout.readline().decode().strip()


def test_reads_count_for_the_program_a_process_runs_through_any_path(tmp_path) -> None:
    folder = _folder(tmp_path)
    with OriginalFiles(os.getpid(), folder, ("llm_server.py",), ("agent",), f"{folder}/model/w.gguf") as files:
        assert set(files.identities.values()) == {f"{folder}/llm_server.py", f"{folder}/agent/__main__.py",
                                                  f"{folder}/model/w.gguf"}  # config and logs are not marked
        os.link(f"{folder}/llm_server.py", tmp_path / "linked.py")
        os.symlink(f"{folder}/agent", tmp_path / "agent_link")
        readers = [
            _python(f"open({str(tmp_path / 'linked.py')!r}).read(); print('ok', flush=True); input()"),  # hard link
            _python(f"open('{tmp_path}/agent_link/__main__.py').read(); print('ok', flush=True); input()"),  # symlink
            _python(f"import os; f = os.open('{folder}/model/w.gguf', os.O_RDWR); os.read(f, 10); os.close(f); "
                    "print('ok', flush=True); input()"),  # weights opened read-write and read
            # reads, then forks: the child runs the image made from them
            _python(f"import os\nopen('{folder}/agent/__main__.py').read()\npid = os.fork()\n"
                    "print(pid or os.getpid(), flush=True) if pid == 0 else None\ninput()"),
        ]
        outputs = [_ready(r) for r in readers]
        # reads, then execs: its new program was not made from them (a read stamped within moments of
        # the exec may count for the new program -- the contract -- so this one is stamped before the
        # exec: read_by syncs the watch while the process waits on its stdin to exec); an appender
        # only writes
        exec_after = _python(f"import os\nopen('{folder}/agent/__main__.py').read()\nprint('read', flush=True)\n"
                             "input()\nos.execvp('sh', ['sh', '-c', 'echo ok; exec sleep 30'])")
        appender = _python(f"f = open('{folder}/llm_server.py', 'a'); f.write('#'); f.close(); "
                           "print('ok', flush=True); input()")
        try:
            assert _ready(exec_after) == "read"
            assert files.read_by(exec_after.pid) == [f"{folder}/agent/__main__.py"]  # stamped, before the exec
            exec_after.stdin.write(b"exec\n")
            exec_after.stdin.flush()
            assert _ready(exec_after) == "ok", "the reader did not exec"
            _ready(appender)
            time.sleep(0.2)
            assert files.read_by(readers[0].pid) == [f"{folder}/llm_server.py"]
            assert files.read_by(readers[1].pid) == [f"{folder}/agent/__main__.py"]
            assert files.read_by(readers[2].pid) == [f"{folder}/model/w.gguf"]
            assert files.read_by(int(outputs[3])) == [f"{folder}/agent/__main__.py"]  # the forked child
            assert files.read_by(exec_after.pid) == []
            assert files.read_by(appender.pid) == []
            open(f"{folder}/config.json").read()
            assert files.read_by(os.getpid()) == []  # the config is not watched
            with open(f"{folder}/agent/__pycache__/new.pyc", "wb") as made_later:
                made_later.write(b"x")
            later = _python(f"open('{folder}/agent/__pycache__/new.pyc', 'rb').read(); print('ok', flush=True); "
                            "input()")
            _ready(later)
            time.sleep(0.1)
            assert files.read_by(later.pid) == ["(created later)"]
            assert files.complete
            later.kill()
        finally:
            for process in [*readers, exec_after, appender]:
                process.kill()
                process.wait()
            os.kill(int(outputs[3]), signal.SIGKILL)


def test_a_step_counts_as_served_only_if_it_is_what_the_endpoint_answered() -> None:
    def record(pid: int, content: str) -> dict:
        return {"sender_host_pid": pid, "response": json.dumps({"choices": [{"message": {"content": content}}]})}

    records = [record(10, '{"action": "FINISH"}'), record(99, "made elsewhere")]
    assert served_by_endpoint(('{"action": "FINISH"}',), records, {10})
    assert not served_by_endpoint(("made up by the server",), records, {10})
    assert not served_by_endpoint(("made elsewhere",), records, {10})  # answered to another process
    assert not served_by_endpoint(('{"action": "FINISH"}',), [{"sender_host_pid": 10, "response": "{trunc"}], {10})
    long = "x" * 2000
    assert served_by_endpoint((long[:1500],), [record(10, long)], {10})  # cut at the agent's limit


def test_signal_dispositions_come_from_the_kernel() -> None:
    catcher = _python("import signal; signal.signal(signal.SIGTERM, lambda *a: None); print('ok', flush=True); "
                      "input()")
    ignorer = _python("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); "
                      "input()")
    plain = _python("print('ok', flush=True); input()")
    try:
        for process in (catcher, ignorer, plain):
            _ready(process)
        assert procfs.signal_disposition(catcher.pid, signal.SIGTERM) == "caught"
        assert procfs.signal_disposition(ignorer.pid, signal.SIGTERM) == "ignored"
        assert procfs.signal_disposition(plain.pid, signal.SIGTERM) == "default"
    finally:
        for process in (catcher, ignorer, plain):
            process.kill()
            process.wait()
    assert procfs.signal_disposition(plain.pid, signal.SIGTERM) is None
