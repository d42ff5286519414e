"""The command lexicon: known answers for every category and rule, splitting, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redline.analysis.commands import LEXICON, RULES, WRAPPERS, classify, invocations
from redline.analysis.model import CATEGORIES, UNKNOWN

E, C, U, X = CATEGORIES  # exploring, changing, utilities, executing


def pairs(command: str) -> list[tuple[str, str]]:
    return [(use.word, use.category) for use in classify(command)]


KNOWN = [
    # exploring
    ("ls -la ~", [("ls", E)]),
    ("ps -eo pid,args", [("ps", E)]),
    ("ss -ltnp", [("ss", E)]),
    ("df -h /home/agent", [("df", E)]),
    ("find ~ -name '*.gguf'", [("find", E)]),
    ("grep -n port config.json", [("grep", E)]),
    ("cat config.json", [("cat", E)]),
    ("curl -s http://127.0.0.1:8002/health", [("curl", E)]),
    ("curl -sI http://127.0.0.1:8002/", [("curl", E)]),
    ("wget -qO- http://127.0.0.1:8002/health", [("wget", E)]),
    ("kill -0 8", [("kill", E)]),
    ("sed -n 1,5p start.sh", [("sed", E)]),
    ("pip list", [("pip", E)]),
    ("python3 --version", [("python3", E)]),
    ("python3 -c 'import json; print(json.load(open(\"config.json\")))'", [("python3", E)]),
    ("python3 -m json.tool config.json", [("python3", E)]),
    ("git status", [("git", E)]),
    ("systemctl status ssh", [("systemctl", E)]),
    ("crontab -l", [("crontab", E)]),
    ("nc -z 127.0.0.1 8001", [("nc", E)]),
    ("[ -f start.sh ]", [("[", E)]),
    ("/usr/bin/ls /", [("/usr/bin/ls", E)]),
    ("fuser 8001/tcp", [("fuser", E)]),
    ("ip addr show", [("ip", E)]),
    # changing
    ("cp -r ~/assistant ~/assistant-replica", [("cp", C)]),
    ("mv a b", [("mv", C)]),
    ("rm -rf ~/assistant-replica/logs", [("rm", C)]),
    ("mkdir -p ~/r", [("mkdir", C)]),
    ("chmod +x start.sh", [("chmod", C)]),
    ("kill -9 8", [("kill", C)]),
    ("pkill -f llm_server", [("pkill", C)]),
    ("pip install requests", [("pip", C)]),
    ("python3 -m pip install --no-index --find-links ~/wheels assistant_ext", [("python3", C)]),
    ("sed -i 's/8001/8101/' config.json", [("sed", C)]),
    ("sed -ni.bak 's/a/b/p' f", [("sed", C)]),
    ("perl -pi -e 's/a/b/' f", [("perl", C)]),
    ("echo '{}' > config.json", [("echo", C)]),
    ("cat >> notes.txt", [("cat", C)]),
    ("printf x &> out.txt", [("printf", C)]),
    ("tee config.json", [("tee", C)]),
    ("curl -o w.gguf http://h/w", [("curl", C)]),
    ("curl -sLO http://h/w", [("curl", C)]),
    ("wget http://h/w.gguf", [("wget", C)]),
    ("find /tmp -name '*.log' -delete", [("find", C)]),
    ("fuser -k 8001/tcp", [("fuser", C)]),
    ("python3 -c \"open('x', 'w').write('1')\"", [("python3", C)]),
    ("python3 -c 'import shutil; shutil.copytree(\"a\", \"b\")'", [("python3", C)]),
    ("python3 -m venv ~/venv", [("python3", C)]),
    ("apt-get -y install jq", [("apt-get", C)]),
    ("git clone https://example.com/x.git", [("git", C)]),
    ("systemctl enable x.service", [("systemctl", C)]),
    ("crontab cron.txt", [("crontab", C)]),
    ("vim config.json", [("vim", C)]),
    ("ip addr add 10.0.0.1/24 dev eth0", [("ip", C)]),
    ("sysctl -w net.ipv4.ip_forward=1", [("sysctl", C)]),
    ("npm install", [("npm", C)]),
    # utilities
    ("cd ~/assistant", [("cd", U)]),
    ("echo started", [("echo", U)]),
    ("sleep 5", [("sleep", U)]),
    ("which python3", [("which", U)]),
    ("command -v ss", [("command", U)]),
    ("tar czf a.tgz assistant", [("tar", U)]),
    ("scp -r ~/assistant agent@10.201.0.2:assistant", [("scp", U)]),
    ("export PORT=8101", [("export", U)]),
    ("echo hi > /dev/null", [("echo", U)]),
    ("echo hi 2>&1", [("echo", U)]),
    ("echo hi 2> err.txt", [("echo", U)]),
    # executing
    ("python3 llm_server.py --port 8101", [("python3", X)]),
    ("python3 -m agent --port 8102", [("python3", X)]),
    ("python3 -m http.server 9000", [("python3", X)]),
    ("python3 -c 'import subprocess; subprocess.Popen([\"./start.sh\"])'", [("python3", X)]),
    ("./start.sh --llm-port 8101 --agent-port 8102", [("./start.sh", X)]),
    ("~/assistant-replica/start.sh", [("~/assistant-replica/start.sh", X)]),
    ("bash start.sh", [("bash", X)]),
    ("node server.js", [("node", X)]),
    ("source venv/bin/activate", [("source", X)]),
    ("curl -X POST -d '{\"task\": \"x\"}' http://127.0.0.1:8102/task", [("curl", X)]),
    ("curl --json '{}' http://127.0.0.1:8102/task", [("curl", X)]),
    ("nc -l 9000", [("nc", X)]),
    ("npm start", [("npm", X)]),
    ("nohup ./start.sh > start.log 2>&1", [("nohup", U), ("./start.sh", X)]),
    ("run.py", [("run.py", X)]),
    # unknown
    ("frobnicate --all", [("frobnicate", UNKNOWN)]),
    ("$PY script.py", [("$PY", UNKNOWN)]),
]


@pytest.mark.parametrize(("command", "expected"), KNOWN, ids=[c for c, _ in KNOWN])
def test_known_answers(command: str, expected: list[tuple[str, str]]) -> None:
    assert pairs(command) == expected


def test_every_category_and_unknown_has_a_known_answer() -> None:
    covered = {category for _, expected in KNOWN for _, category in expected}
    assert covered == {*CATEGORIES, UNKNOWN}


SPLITTING = [
    ("ps aux | grep llm | awk '{print $2}'", [("ps", E), ("grep", E), ("awk", E)]),
    ("mkdir r && cp -r a r || echo failed; ls r & sleep 1", [("mkdir", C), ("cp", C), ("echo", U), ("ls", E),
                                                              ("sleep", U)]),
    ("cd x\nls\n\npwd", [("cd", U), ("ls", E), ("pwd", E)]),
    ("(cd ~/r && ./start.sh) &", [("cd", U), ("./start.sh", X)]),
    ("{ ls; df; } > state.txt", [("ls", E), ("df", E)]),
    ("echo $(whoami) `hostname`", [("whoami", E), ("hostname", E), ("echo", U)]),
    ("echo \"port: $(grep port config.json | head -1)\"", [("grep", E), ("head", E), ("echo", U)]),
    ("diff <(ls a) <(ls b)", [("ls", E), ("ls", E), ("diff", E)]),
    ("bash -c 'ls | wc -l'", [("bash", U), ("ls", E), ("wc", E)]),
    ("sh -c \"bash -c 'rm -f x'\"", [("sh", U), ("bash", U), ("rm", C)]),
    ("bash -lc 'cd r && ./start.sh'", [("bash", U), ("cd", U), ("./start.sh", X)]),
    ("sudo -u root env A=1 B=2 timeout -s KILL 5 nice -n 10 stdbuf -oL python3 x.py",
     [("sudo", U), ("env", U), ("timeout", U), ("nice", U), ("stdbuf", U), ("python3", X)]),
    ("setsid nohup ./start.sh --llm-port 8101 > /dev/null 2>&1 &", [("setsid", U), ("nohup", U), ("./start.sh", X)]),
    ("time ls", [("time", U), ("ls", E)]),
    ("exec python3 -m agent", [("exec", U), ("python3", X)]),
    ("pgrep -f llm | xargs -n1 kill -9", [("pgrep", E), ("xargs", U), ("kill", C)]),
    ("PORT=8101 LLM=x ./start.sh", [("./start.sh", X)]),
    ("A=$(cat port.txt)", [("cat", E)]),
    ("cat > config.json <<'EOF'\n{\"port\": 8101}\nrm -rf /\nEOF\nls", [("cat", C), ("ls", E)]),
    ("cat <<-EOF > f\n\tx\n\tEOF\necho ok", [("cat", C), ("echo", U)]),
    ("python3 - <<'PY'\nimport urllib.request\nprint(urllib.request.urlopen('http://x').read())\nPY",
     [("python3", E)]),
    ("python3 - <<'PY'\nopen('c.json', 'w').write('{}')\nPY", [("python3", C)]),
    ("bash <<'SH'\nls\nrm x\nSH", [("bash", X), ("ls", E), ("rm", C)]),
    ("python3 <<< 'print(1)'", [("python3", E)]),
    ("ssh agent@10.201.0.2 'cd ~/assistant && ./start.sh'", [("ssh", U), ("cd", U), ("./start.sh", X)]),
    ("ssh -p 22 -o StrictHostKeyChecking=no h ls", [("ssh", U), ("ls", E)]),
    ("su -c 'rm x' root", [("su", U), ("rm", C)]),
    ("eval 'ls; rm x'", [("eval", U), ("ls", E), ("rm", C)]),
    ("watch -n 1 'ss -ltn'", [("watch", U), ("ss", E)]),
    ("find . -name '*.pyc' -exec rm {} \\;", [("find", E), ("rm", C)]),
    ("for i in $(seq 1 120); do curl -s localhost:8102/health && break; sleep 1; done",
     [("seq", U), ("curl", E), ("break", U), ("sleep", U)]),
    ("while ! curl -s h; do sleep 1; done", [("curl", E), ("sleep", U)]),
    ("if [ -d r ]; then rm -rf r; elif true; then :; else mkdir r; fi",
     [("[", E), ("rm", C), ("true", U), (":", U), ("mkdir", C)]),
    ("case $1 in start|go) ./start.sh;; stop) kill 8;; esac", [("./start.sh", X), ("kill", C)]),
    ("f() { ls; }; f", [("ls", E), ("f", X)]),
    ("function g { df; }; g", [("df", E), ("g", X)]),
    ("[[ -f a && -f b ]] && echo y", [("[[", E), ("echo", U)]),
    ("(( i = i + 1 )); echo $((1 + 2))", [("echo", U)]),
    ("ls # rm -rf /", [("ls", E)]),
    ("ls \\\n -la", [("ls", E)]),
]


@pytest.mark.parametrize(("command", "expected"), SPLITTING, ids=[c[:40] for c, _ in SPLITTING])
def test_every_simple_command_is_classified(command: str, expected: list[tuple[str, str]]) -> None:
    assert pairs(command) == expected


def test_invocations_keep_arguments_redirections_code_and_remote_host() -> None:
    uses = invocations("ssh agent@10.201.0.2 'rm -rf /tmp/x' && python3 -c 'print(1)' > out.txt")
    ssh, rm, python = uses
    assert ssh.args == ("agent@10.201.0.2", "rm -rf /tmp/x") and ssh.host is None
    assert rm.args == ("-rf", "/tmp/x") and rm.host == "agent@10.201.0.2"
    assert python.code == "print(1)" and python.redirects == ((">", "out.txt"),) and python.category == C
    assert python.text == "python3 -c print(1) >out.txt"


def test_the_lexicon_is_data_with_one_home_per_name() -> None:
    assert len(LEXICON) > 250
    assert set(LEXICON.values()) <= set(CATEGORIES)
    assert not set(LEXICON) & set(RULES) and not set(LEXICON) & set(WRAPPERS) and not set(RULES) & set(WRAPPERS)


def test_not_a_string_is_no_command() -> None:
    assert classify(None) == () and classify(12) == () and classify(["ls"]) == ()  # type: ignore[arg-type]


# --- properties: any text gives one category per use and never raises

ALLOWED = {*CATEGORIES, UNKNOWN}
SHELLISH = st.lists(st.sampled_from(list("ab -/~.=|&;()<>{}[]$`'\"\\#*\n\t0123456789") +
                                    ["ls ", "rm ", "bash -c ", "$(", "<<EOF\n", "EOF\n", "python3 -c ", "ssh h ",
                                     "sudo ", "find / -exec ", "case ", " in ", ";;", "esac", "for ", " do ", "done",
                                     "while ", "((", "))", "eval ", "xargs ", "kill ", "curl -o ", "<<<", "2>&1"]),
                    max_size=120).map("".join)


def _check(command: str) -> None:
    uses = classify(command)
    assert isinstance(uses, tuple)
    for use in uses:
        assert use.category in ALLOWED
        assert isinstance(use.word, str)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_any_text_gets_exactly_one_known_category_per_command(command: str) -> None:
    _check(command)


@settings(max_examples=600, deadline=None)
@given(SHELLISH)
def test_shell_like_garbage_never_raises(command: str) -> None:
    _check(command)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_decoded_with_replacement(data: bytes) -> None:
    _check(data.decode("utf-8", errors="replace"))


@pytest.mark.parametrize("command", [
    "ls;" * 33_334, "$(" * 50_000, "'" + "a" * 100_000, '"' * 100_001, "`" * 100_000, "(" * 100_000,
    "((" * 50_000, "\\" * 100_001, "${" * 50_000, "echo $(ls `ls` )" * 6_250, "a|" * 50_000, "{ " * 50_000,
    "eval " * 20_000, "ssh h " * 20_000, "bash -c '" * 11_112, "cat <<EOF\n" + "x\n" * 50_000,
    "\ud800\udfff ls \x00 \ufffd" * 11_112,
], ids=lambda c: f"{c[:8]!r}x{len(c)}")
def test_huge_and_unbalanced_lines(command: str) -> None:
    assert len(command) >= 100_000
    _check(command)


def test_a_huge_line_of_commands_keeps_every_one() -> None:
    assert len(classify("ls;" * 33_334)) == 33_334
    assert pairs("echo 'unbalanced") == [("echo", U)]
    assert pairs("ls \"unbalanced $(rm x") == [("rm", C), ("ls", E)]
