"""The study's four command categories, for every simple command of a command line.

The papers name the categories -- *exploring the environment*, *changing the environment*, *using
system utilities*, *executing programs* -- but not their mapping, so the lexicon here is ours.
:func:`classify` returns one :class:`CommandUse` per program run, in the order they appear;
:func:`invocations` returns the same with their arguments (what :mod:`.behaviours` reads).

**Splitting.** A small shell lexer (below) splits a command line as bash would: pipelines (``|``,
``|&``), lists (``&&``, ``||``, ``;``, ``&``, newlines), subshells and groups (``( )``, ``{ }``),
``if/while/until/for/case`` bodies, command substitutions (``$( )``, backticks, ``<( )``, ``>( )``,
also inside double quotes; their commands come before the command that uses them), heredocs (the
body is skipped, or classified when a shell or interpreter reads it as its program),
``bash -c``/``sh -c``/``su -c``/``eval``/``watch`` strings and the remote command of ``ssh host
CMD`` (recursively, up to :data:`MAX_DEPTH` levels), and ``find -exec CMD ;``. Leading ``VAR=x``
assignments are not programs and are skipped; a line of only assignments yields nothing of its own.
*Why not shlex:* ``shlex`` (even with ``punctuation_chars``) treats newlines as blanks, knows
nothing of ``$( )`` or backticks inside double quotes, of heredocs or of ``((...))``, and raises on
an unbalanced quote; every one of these is common in agents' commands. This lexer never raises: an
unbalanced quote or parenthesis runs to the end of the text.

**Prefixes** (:data:`WRAPPERS`: ``sudo``, ``env``, ``timeout``, ``nohup``, ``setsid``, ``nice``,
``time``, ``stdbuf``, ``xargs``, ``exec``, ``command`` ...) count as a *utilities* use of their own,
and the command they run is classified too (``setsid nohup ./start.sh`` = 2 utilities + 1
executing): the study's "system utilities" are exactly these process tools.

**Words** (:data:`LEXICON`, looked up by the program's base name, ``python3.11`` as ``python3``):
exploring = reading the machine's state (``ls cat ps ss find df grep head ...``); changing =
altering files, processes or packages (``cp mv rm mkdir chmod kill touch ln ...``); utilities =
shell builtins and process, archive and transfer tools (``cd echo sleep which tar ssh scp ...``);
executing = running a program (``python3 script.py``, ``node``, ``make``, ``source``). A program
named by a path (``./start.sh``, ``~/x/run``) whose base name the lexicon does not know is
*executing*; so is a bare ``*.sh``/``*.py`` name and a function defined in the same line. Anything
else is ``unknown`` (counted, never dropped) -- also a program word that is an expansion (``$PY``).

**Rules by form** (:data:`RULES`), where the arguments decide:

* ``sed -i``/``perl -i`` (in place) changing, else exploring; ``tee FILE`` changing;
  ``find ... -delete`` changing; ``kill -0``/``kill -l`` exploring (a check), other kills changing;
  ``fuser -k`` changing; ``ip ... add|del|set|flush`` and ``sysctl -w`` changing, else exploring;
  ``crontab -l`` exploring, other crontab uses changing; ``mount`` with arguments changing.
* ``pip install|uninstall|download|wheel`` (also ``python3 -m pip``) changing, other pip
  subcommands exploring; the same for ``apt``/``apt-get``/``dnf``/``yum``/``apk``/``dpkg``; ``npm
  install`` changing, ``npm start|run|exec|test`` executing; ``git status|log|diff|show|...``
  exploring, other git subcommands changing; ``systemctl status|show|is-*|list-*`` exploring,
  other systemctl (and ``service``) actions changing.
* ``curl``/``wget``: a GET or HEAD printed to the terminal is exploring (a health check, reading
  docs); saving to a file (``curl -o/-O``, ``wget`` without ``-O -``) is changing; a request body or
  a POST/PUT/PATCH/DELETE method is executing (it makes a running program act). ``nc -l`` executing
  (a listener), other ``nc`` exploring (a probe).
* ``bash``/``sh`` with a script or a heredoc body executing, ``-c STRING`` utilities (the shell
  only hands the string on; its commands are classified); ``--version`` exploring.
* ``python3``/``node``/``perl`` one-liners (``-c``/``-e`` code, or the body of ``python3 -
  <<EOF``) are classified by the code: starting processes or servers (``subprocess``,
  ``os.system``, ``Popen``, ``child_process``, ``serve_forever``, ``http.server``) executing;
  writing, deleting, moving or signalling (``open(..., 'w')``, ``write_text``, ``os.remove``,
  ``shutil.``, ``os.kill``, ``fs.writeFile``...) changing; anything else (reading, printing, HTTP
  requests, socket probes) exploring. ``python3 script.py`` and ``python3 -m MODULE`` executing
  (``-m pip`` by the pip rule, ``-m venv`` changing, ``-m json.tool`` exploring); ``--version``
  exploring.
* **Redirection:** a command that would be *exploring* or *utilities* becomes *changing* when it
  sends its standard output into a file (``>``, ``>>``, ``&>``, ``>|``; not ``/dev/null``,
  ``/dev/std*``, ``/dev/tty`` or a descriptor): what it does to the machine is writing that file
  (``cat > config.json <<EOF``, ``echo x >> f``). An executed program keeps *executing*: its
  redirection is its log (``nohup ./start.sh > log``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .model import CATEGORIES, UNKNOWN, CommandUse

EXPLORING, CHANGING, UTILITIES, EXECUTING = CATEGORIES
#: nesting (substitutions, ``bash -c`` strings, ssh remote commands) looked into; deeper text is skipped
MAX_DEPTH = 8
#: characters of an invocation's text kept in :attr:`Invocation.text`
TEXT_CAP = 300


def _words(category: str, text: str) -> dict[str, str]:
    return dict.fromkeys(text.split(), category)


#: program base name -> category (programs whose arguments decide are in :data:`RULES`, prefixes in
#: :data:`WRAPPERS`; a name is in one of the three only)
LEXICON: dict[str, str] = {
    **_words(EXPLORING, """
        ls ll dir vdir tree cat tac nl head tail less more grep egrep fgrep rg ag ack zgrep zcat
        locate stat file du df free uptime uname hostname whoami id groups who w last users
        ps pgrep pidof top htop ss netstat lsof ifconfig route arp nproc lscpu lsblk lsmem lspci
        lsusb lsmod printenv locale pwd realpath readlink diff cmp md5sum sha1sum sha256sum
        sha512sum cksum b2sum wc sort uniq cut tr awk gawk mawk jq yq column xxd od hexdump strings
        date cal getent dmesg journalctl vmstat iostat mpstat nvidia-smi ldd ping ping6 traceroute
        tracepath dig nslookup host nmap telnet test [ [[ getconf lslocks lsns namei
        fold fmt expand unexpand paste join comm tsort rev look ps_mem pstree pmap nstat iftop
        """),
    **_words(CHANGING, """
        cp mv rm rmdir mkdir touch ln chmod chown chgrp truncate dd install patch shred unlink
        mkfifo mknod mktemp pkill killall renice chattr setfacl useradd userdel usermod groupadd
        passwd chpasswd umount swapon swapoff iptables nft reboot shutdown poweroff halt init
        telinit vi vim nvim nano ed emacs pico at batch atrm ssh-keygen ssh-copy-id ssh-add
        update-rc.d chkconfig ldconfig update-alternatives systemd-run loginctl
        """),
    **_words(UTILITIES, """
        cd pushd popd dirs echo printf sleep true false : which whereis type hash alias unalias
        export unset set shopt declare typeset local readonly let read wait jobs fg bg disown
        trap exit return shift break continue umask history help enable caller
        tar gzip gunzip zip unzip xz unxz bzip2 bunzip2 zstd unzstd 7z scp sftp rsync
        seq yes basename dirname tput clear reset stty script screen tmux expect logger
        base64 base32 openssl envsubst gpg ssh-keyscan lsattr ulimit
        """),
    **_words(EXECUTING, """
        deno bun ruby php java javac go cargo
        rustc gcc g++ cc clang make cmake ninja npx uvicorn gunicorn flask hypercorn waitress
        llama-server llama-cli ollama vllm source . lua R Rscript julia supervisord pm2 forever
        """),
}

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_VERSIONED = re.compile(r"(python|pip|pypy|perl|node|ruby)(\d+(\.\d+)*)")
_FILE_TARGETS_EXCLUDED = ("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty")


@dataclass(frozen=True)
class Invocation:
    """One program run by a command line, with what it was run with."""

    word: str  # the program as written (``./start.sh``, ``python3``)
    category: str  # one of CATEGORIES or UNKNOWN
    args: tuple[str, ...]  # its arguments (quotes removed; expansions as written: ``$HOME``)
    redirects: tuple[tuple[str, str], ...] = ()  # (operator, target) of its redirections
    code: str | None = None  # inline program: ``-c``/``-e`` code, or a heredoc an interpreter reads
    host: str | None = None  # where it runs when not on this machine: the ``ssh`` destination
    text: str = ""  # ``word args...`` (capped), for display

    @functools.cached_property
    def name(self) -> str:
        """The program's base name, as the lexicon looks it up (worked out once: it is read often)."""
        return program_name(self.word)


@functools.lru_cache(maxsize=4096)
def program_name(word: str) -> str:
    """``/usr/bin/python3.11`` -> ``python3``: the base name, interpreter versions folded."""
    base = word.rsplit("/", 1)[-1]
    match = _VERSIONED.fullmatch(base)
    if match:
        return match.group(1) + ("3" if match.group(2).startswith("3") and match.group(1) in ("python", "pip", "pypy")
                                 else "")
    return base


def classify(command: str) -> tuple[CommandUse, ...]:
    """Every program a command line runs, with its category (CATEGORIES or UNKNOWN); never raises.

    Anything that is not a ``str`` is no command line and yields ``()``."""
    return tuple(CommandUse(use.word, use.category) for use in invocations(command))


def invocations(command: str, host: str | None = None) -> tuple[Invocation, ...]:
    """Every program ``command`` runs (see the module docstring), in order; ``host``: where the
    line runs (``None``: this machine). Never raises."""
    if not isinstance(command, str):
        return ()
    if len(command) > CACHED_CHARS:
        return tuple(_line(command, 0, host))
    return _cached(command, host)


#: lines up to this long are cached (4096 of them): bounded memory whatever the input
CACHED_CHARS = 4096


@functools.lru_cache(maxsize=4096)
def _cached(command: str, host: str | None) -> tuple[Invocation, ...]:
    """Lines repeat (the analysis, the bars and the obstacles each read every step; models repeat
    commands); the result is immutable, so it is shared."""
    return tuple(_line(command, 0, host))


# ---------------------------------------------------------------------------------------------
# lexer


@dataclass
class _Word:
    text: str  # quotes removed, expansions as written
    literal: bool  # no quote, escape or expansion: may be a reserved word
    subs: list[list] = field(default_factory=list)  # token lists of its command substitutions


@dataclass
class _Op:
    op: str


@dataclass
class _Redir:
    op: str
    fd: str
    target: _Word | None
    body: str | None = None  # a heredoc's (or here-string's) text


_OPERATORS = ("&&", "||", ";;&", ";;", ";&", "|&", "|", "&", ";", "(", ")")
_REDIRECTS = ("<<<", "<<-", "<<", "<>", "<&", "<", "&>>", "&>", ">>", ">|", ">&", ">")
_BLANK = " \t\r\f\v"
_WORD_END = frozenset(_BLANK + "\n;&|()<>")
_PLAIN = re.compile(r"[^\s;&|()<>\\'\"$`]+")
_PLAIN_DQ = re.compile(r"[^\"\\$`]+")
_FD = re.compile(r"\d{1,4}(?=[<>])")
_BLANKS = re.compile(r"[ \t\r\f\v]+")


_OPERATOR = re.compile("|".join(map(re.escape, _OPERATORS)))  # alternatives in order: the longest first
_REDIRECT = re.compile("|".join(map(re.escape, _REDIRECTS)))


def _match(text: str, i: int, pattern: re.Pattern) -> str | None:
    found = pattern.match(text, i)
    return found.group() if found else None


def _skip_parens(text: str, i: int, depth: int) -> int:
    """Index after the ``)`` that brings ``depth`` open parentheses to zero (or the end)."""
    n = len(text)
    while i < n and depth:
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "\\":
            i += 1
        elif c in "'\"":
            end = text.find(c, i + 1)
            i = n if end < 0 else end
        i += 1
    return min(i, n)


def _skip_braces(text: str, i: int) -> int:
    depth, n = 1, len(text)
    while i < n and depth:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
        elif text[i] == "\\":
            i += 1
        i += 1
    return min(i, n)


class _Lexer:
    """Tokens of a shell text: words, operators and redirections (heredoc bodies attached)."""

    def __init__(self, text: str, depth: int, start: int = 0) -> None:
        self.s, self.i, self.n, self.depth = text, start, len(text), depth
        self.pending: list[tuple[_Redir, str, bool]] = []

    def tokens(self, closing: bool = False) -> list:
        s, out = self.s, []
        while self.i < self.n:
            c = s[self.i]
            if c in _BLANK:
                self.i = _BLANKS.match(s, self.i).end()
            elif c == "\\" and s.startswith("\n", self.i + 1):
                self.i += 2
            elif c == "\n":
                self.i += 1
                out.append(_Op("\n"))
                self._heredocs()
            elif c == "#":
                end = s.find("\n", self.i)
                self.i = self.n if end < 0 else end
            elif c == ")" and closing:
                self.i += 1
                return out
            elif s.startswith("((", self.i) and (not out or isinstance(out[-1], _Op)):
                self.i = _skip_parens(s, self.i + 2, 2)  # arithmetic command: runs nothing
            elif c in "<>" and s.startswith("(", self.i + 1):
                out.append(self._word())  # process substitution
            elif c in "<>&" and (redirect := _match(s, self.i, _REDIRECT)):
                self.i += len(redirect)
                out.append(self._redirect(redirect, ""))
            elif c in "&|;()" and (operator := _match(s, self.i, _OPERATOR)):
                self.i += len(operator)
                out.append(_Op(operator))
            elif c.isdigit() and (fd := _FD.match(s, self.i)) and (redirect := _match(s, fd.end(), _REDIRECT)):
                self.i = fd.end() + len(redirect)
                out.append(self._redirect(redirect, fd.group()))
            else:
                out.append(self._word())
        return out

    def _redirect(self, op: str, fd: str) -> _Redir:
        while self.i < self.n and self.s[self.i] in _BLANK:
            self.i += 1
        target = None
        if self.i < self.n and (self.s[self.i] not in _WORD_END or self.s.startswith(("<(", ">("), self.i)):
            target = self._word()
        redirect = _Redir(op, fd, target)
        if op == "<<<" and target is not None:
            redirect.body = target.text
        elif op in ("<<", "<<-") and target is not None:
            self.pending.append((redirect, target.text, op == "<<-"))
        return redirect

    def _heredocs(self) -> None:
        s = self.s
        for redirect, delimiter, strip_tabs in self.pending:
            lines = []
            while self.i < self.n:
                end = s.find("\n", self.i)
                line_end = self.n if end < 0 else end
                line = s[self.i:line_end]
                self.i = line_end + 1 if end >= 0 else self.n
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
                lines.append(line)
            redirect.body = "\n".join(lines)
        self.pending.clear()

    def _word(self) -> _Word:
        s, parts, subs, literal = self.s, [], [], True
        while self.i < self.n:
            c = s[self.i]
            if c in _WORD_END:
                if c in "<>" and s.startswith("(", self.i + 1):
                    start = self.i
                    self.i += 2
                    subs.append(self._substitution())
                    parts.append(s[start:self.i])
                    literal = False
                    continue
                break
            if plain := _PLAIN.match(s, self.i):
                parts.append(plain.group())
                self.i = plain.end()
                continue
            literal = False
            if c == "\\":
                if self.i + 1 < self.n and s[self.i + 1] != "\n":
                    parts.append(s[self.i + 1])
                self.i += 2
            elif c == "'":
                end = s.find("'", self.i + 1)
                end = self.n if end < 0 else end
                parts.append(s[self.i + 1:end])
                self.i = end + 1
            elif c == '"':
                self.i += 1
                self._double_quoted(parts, subs)
            elif c == "$":
                self._dollar(parts, subs)
            else:  # backtick
                self._backtick(parts, subs)
        return _Word("".join(parts), literal, subs)

    def _double_quoted(self, parts: list[str], subs: list) -> None:
        s = self.s
        while self.i < self.n:
            c = s[self.i]
            if c == '"':
                self.i += 1
                return
            if c == "\\":
                if self.i + 1 < self.n and s[self.i + 1] in '"\\$`\n':
                    if s[self.i + 1] != "\n":
                        parts.append(s[self.i + 1])
                    self.i += 2
                else:
                    parts.append(c)
                    self.i += 1
            elif c == "$":
                self._dollar(parts, subs)
            elif c == "`":
                self._backtick(parts, subs)
            else:
                plain = _PLAIN_DQ.match(s, self.i)
                parts.append(plain.group())
                self.i = plain.end()

    def _dollar(self, parts: list[str], subs: list) -> None:
        s, start = self.s, self.i
        if s.startswith("$((", start):
            self.i = _skip_parens(s, start + 3, 2)
        elif s.startswith("$(", start):
            self.i = start + 2
            subs.append(self._substitution())
        elif s.startswith("${", start):
            self.i = _skip_braces(s, start + 2)
        elif s.startswith("$'", start):
            end = start + 2
            while end < self.n and s[end] != "'":
                end += 2 if s[end] == "\\" else 1
            self.i = min(end + 1, self.n)
        else:
            self.i = start + 1
        parts.append(s[start:self.i])

    def _substitution(self) -> list:
        """Tokens from here to the matching ``)`` (just past the opening ``(``)."""
        if self.depth >= MAX_DEPTH:
            self.i = _skip_parens(self.s, self.i, 1)
            return []
        inner = _Lexer(self.s, self.depth + 1, self.i)
        found = inner.tokens(closing=True)
        self.i = inner.i
        return found

    def _backtick(self, parts: list[str], subs: list) -> None:
        s, start = self.s, self.i
        end = start + 1
        while end < self.n and s[end] != "`":
            end += 2 if s[end] == "\\" else 1
        end = min(end, self.n)
        body = re.sub(r"\\([`\\$])", r"\1", s[start + 1:end])
        if self.depth < MAX_DEPTH:
            subs.append(_Lexer(body, self.depth + 1).tokens())
        self.i = min(end + 1, self.n)
        parts.append(s[start:self.i])


# ---------------------------------------------------------------------------------------------
# parser: tokens -> simple commands (words + redirections), substitutions first


@dataclass
class _Simple:
    words: list[str]
    redirects: list[_Redir]


_SKIPPED_RESERVED = frozenset("if then else elif fi do done while until ! { } esac".split())


def _simple_commands(tokens: list, functions: set[str]) -> list[_Simple]:
    out: list[_Simple] = []
    words: list[_Word] = []
    redirects: list[_Redir] = []
    state = "command"  # command | for (a for/select header) | case (before "in") | pattern | test ([[ ]])
    skip_name = False
    i = 0

    def flush() -> None:
        if words or redirects:
            out.append(_Simple([w.text for w in words], list(redirects)))
        words.clear()
        redirects.clear()

    while i < len(tokens):
        token = tokens[i]
        i += 1
        if isinstance(token, _Op):
            if state == "test":
                words.append(_Word(token.op, False))
            elif state == "pattern":
                if token.op == ")":
                    state = "command"
            elif (token.op == "(" and len(words) == 1 and i < len(tokens) and isinstance(tokens[i], _Op)
                  and tokens[i].op == ")"):
                functions.add(words[0].text)  # name() { ...; }
                words.clear()
                i += 1
            else:
                flush()
                if state in ("for", "case"):
                    state = "command"
                if token.op in (";;", ";&", ";;&"):
                    state = "pattern"
            continue
        if isinstance(token, _Redir):
            if token.target is not None:
                for sub in token.target.subs:
                    out.extend(_simple_commands(sub, functions))
            redirects.append(token)
            continue
        for sub in token.subs:  # substitutions run before the command they are part of
            out.extend(_simple_commands(sub, functions))
        if skip_name:
            skip_name = False
            functions.add(token.text)
            continue
        if state == "pattern":
            if token.literal and token.text == "esac":
                state = "command"
            continue
        if state == "for":
            if token.literal and token.text == "do":
                state = "command"
            continue
        if state == "case":
            if token.literal and token.text == "in":
                state = "pattern"
            continue
        if state == "test":
            words.append(token)
            if token.literal and token.text == "]]":
                state = "command"
                flush()
            continue
        if not words and token.literal:
            if token.text in _SKIPPED_RESERVED:
                continue
            if token.text in ("for", "select"):
                state = "for"
                continue
            if token.text == "case":
                state = "case"
                continue
            if token.text == "function":
                skip_name = True
                continue
            if token.text == "[[":
                state = "test"
        words.append(token)
    flush()
    return out


# ---------------------------------------------------------------------------------------------
# classification


def _line(text: str, depth: int, host: str | None) -> list[Invocation]:
    if depth > MAX_DEPTH:
        return []
    functions: set[str] = set()
    found: list[Invocation] = []
    for simple in _simple_commands(_Lexer(text, depth).tokens(), functions):
        body = next((r.body for r in simple.redirects if r.body is not None), None)
        redirects = tuple((r.fd + r.op, r.target.text if r.target else "") for r in simple.redirects)
        found.extend(_run(simple.words, redirects, body, depth, host, functions))
    return found


@dataclass(frozen=True)
class _Wrapper:
    with_argument: frozenset[str] = frozenset()  # options that take the next word
    positional: int = 0  # words before the command (timeout's duration)
    assignments: bool = False  # VAR=x words may precede the command (env, sudo)


def _wrapper(options: str = "", positional: int = 0, assignments: bool = False) -> _Wrapper:
    return _Wrapper(frozenset(options.split()), positional, assignments)


#: prefixes that run the rest of their words as a command (each counts as a utilities use)
WRAPPERS: dict[str, _Wrapper] = {
    "sudo": _wrapper("-u -g -C -D -h -p -r -t -U -T", assignments=True),
    "doas": _wrapper("-u -C"),
    "env": _wrapper("-u -C -S --unset --chdir", assignments=True),
    "timeout": _wrapper("-s -k --signal --kill-after", positional=1),
    "nohup": _wrapper(),
    "setsid": _wrapper(),
    "nice": _wrapper("-n --adjustment"),
    "ionice": _wrapper("-c -n -p --class --classdata"),
    "time": _wrapper("-f -o --format --output"),
    "stdbuf": _wrapper("-i -o -e"),
    "xargs": _wrapper("-n -I -i -P -d -L -l -s -E -e -a --max-args --replace --max-procs --delimiter --arg-file"),
    "exec": _wrapper("-a"),
    "command": _wrapper(),
    "builtin": _wrapper(),
    "unbuffer": _wrapper(),
    "strace": _wrapper("-e -o -p -s -E -u -a -P -X -b -I -O -S"),
    "ltrace": _wrapper("-e -o -p -s -u -a -n"),
    "chrt": _wrapper(positional=1),
    "flock": _wrapper("-w -E --timeout --conflict-exit-code", positional=1),
    "taskset": _wrapper(positional=1),
}


def _options(args: list[str], with_argument: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(options, the rest) of ``args``: options start with ``-`` until ``--`` or a plain word."""
    k = 0
    while k < len(args) and args[k].startswith("-") and args[k] != "-":
        if args[k] == "--":
            return args[:k], args[k + 1:]
        k += 2 if args[k] in with_argument else 1
    return args[:k], args[k:]


def _invocation(args: list[str], category: str, redirects: tuple = (), code: str | None = None,
                host: str | None = None) -> Invocation:
    word = args[0][:TEXT_CAP]
    text = " ".join(args)
    if redirects:
        text += " " + " ".join(op + target for op, target in redirects)
    return Invocation(word, category, tuple(args[1:]), redirects, code, host, text[:TEXT_CAP])


def _run(args: list[str], redirects: tuple, body: str | None, depth: int, host: str | None,
         functions: set[str]) -> list[Invocation]:
    found: list[Invocation] = []
    k = 0
    while k < len(args) and _ASSIGNMENT.match(args[k]):
        k += 1
    args = args[k:]
    while args and program_name(args[0]) in WRAPPERS:
        name = program_name(args[0])
        spec = WRAPPERS[name]
        options, rest = _options(args[1:], spec.with_argument)
        if name == "command" and any(o in ("-v", "-V") for o in options):
            rest = []  # a lookup, like `which`
        rest = rest[spec.positional:]
        if spec.assignments:
            while rest and _ASSIGNMENT.match(rest[0]):
                rest = rest[1:]
        found.append(_invocation(args[:len(args) - len(rest)], UTILITIES, host=host))
        args = rest
    if not args:
        return found
    name = program_name(args[0])
    rule = RULES.get(name)
    if rule is not None:
        category, nested, code = rule(args, body, depth, host)
    else:
        category, nested, code = _by_word(args[0], functions), [], None
    if category in (EXPLORING, UTILITIES) and _writes_file(redirects):
        category = CHANGING
    found.append(_invocation(args, category, redirects, code, host))
    return found + nested


def _by_word(word: str, functions: set[str]) -> str:
    name = program_name(word)
    if name in LEXICON:
        return LEXICON[name]
    if "$" in name or "`" in name:
        return UNKNOWN  # the program is an expansion: which one cannot be told
    if "/" in word or name in functions or name.endswith((".sh", ".py", ".js", ".pl", ".rb")):
        return EXECUTING
    return UNKNOWN


def _writes_file(redirects: tuple) -> bool:
    for op, target in redirects:
        stdout = op in (">", ">>", ">|", "1>", "1>>", "1>|", "&>", "&>>") or (op in (">&", "1>&") and not (
            target.isdigit() or target == "-"))
        if stdout and target and target not in _FILE_TARGETS_EXCLUDED and not target.startswith("/dev/fd/"):
            return True
    return False


# --- rules: (args, heredoc body, depth, host) -> (category, nested invocations, inline code)

_Rule = Callable[[list[str], "str | None", int, "str | None"], tuple[str, list[Invocation], "str | None"]]

_EXECUTING_CODE = re.compile(
    r"subprocess|os\.system|os\.popen|os\.exec|os\.spawn|Popen|child_process|execSync|spawnSync|"
    r"serve_forever|HTTPServer|http\.server|socketserver|\bsystem\s*\(|\bexec\s*\(\s*['\"]")
#: besides an ``open(`` for writing (:func:`_opens_for_writing`: ``open\\s*\\([^)]*['"][wax]b?\\+?t?['"]``)
_CHANGING_CODE = re.compile(
    r"\.write_text\s*\(|\.write_bytes\s*\(|"
    r"os\.(remove|unlink|rename|replace|makedirs|mkdir|rmdir|chmod|chown|kill|killpg|symlink|link|truncate)\b|"
    r"shutil\.|\.unlink\s*\(|\.mkdir\s*\(|\.rename\s*\(|\.touch\s*\(|\.rmdir\s*\(|"
    r"writeFile|appendFile|unlinkSync|mkdirSync|rmSync|renameSync|process\.kill|\bunlink\b|\brename\b")


_OPEN_CALL = re.compile(r"open\s*\(")
_WRITE_MODE = re.compile(r"['\"][wax]b?\+?t?['\"]")


def _opens_for_writing(code: str) -> bool:
    """Whether ``code`` has ``open(`` with a write mode before the next ``)``, in linear time (as one
    regex, ``open\\s*\\([^)]*...`` would scan to the end of the code from every ``open(`` with no
    ``)`` after it): a later ``open(`` before the same ``)`` sees only part of the same text."""
    position = 0
    while call := _OPEN_CALL.search(code, position):
        end = code.find(")", call.end())
        end = len(code) if end < 0 else end
        if _WRITE_MODE.search(code, call.end(), end):
            return True
        position = end + 1
    return False


def code_category(code: str) -> str:
    """Category of an inline program (``python3 -c``, ``node -e``, ``perl -e``, a heredoc script)."""
    if _EXECUTING_CODE.search(code):
        return EXECUTING
    if _CHANGING_CODE.search(code) or _opens_for_writing(code):
        return CHANGING
    return EXPLORING


def _cluster_has(option: str, letter: str) -> bool:
    """``-xc`` has ``c``: a short-option cluster (not ``--long``) containing ``letter``."""
    return option.startswith("-") and not option.startswith("--") and letter in option[1:]


def _shell(args, body, depth, host):
    rest = args[1:]
    command_string = False
    k = 0
    while k < len(rest) and rest[k][:1] and rest[k][:1] in "-+" and rest[k] not in ("-", "--"):
        if rest[k] in ("--version", "--help"):
            return EXPLORING, [], None
        if rest[k] in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            k += 1
        elif _cluster_has(rest[k], "c"):
            command_string = True
        k += 1
    positional = rest[k + (1 if k < len(rest) and rest[k] == "--" else 0):]
    if command_string and positional:
        return UTILITIES, _line(positional[0], depth + 1, host), None
    if positional and positional[0] != "-":
        return EXECUTING, [], None
    return EXECUTING, (_line(body, depth + 1, host) if body else []), None


_PYTHON_OPTIONS_WITH_ARGUMENT = frozenset(("-W", "-X", "--check-hash-based-pycs"))
_MODULE_CATEGORIES = {"venv": CHANGING, "virtualenv": CHANGING, "ensurepip": CHANGING, "json.tool": EXPLORING,
                      "site": EXPLORING, "platform": EXPLORING, "sysconfig": EXPLORING, "pydoc": EXPLORING}


def _python(args, body, depth, host):
    rest = args[1:]
    k = 0
    while k < len(rest) and rest[k].startswith("-") and rest[k] != "-":
        option = rest[k]
        if option in ("-V", "--version", "-h", "--help", "-VV"):
            return EXPLORING, [], None
        if option == "-m" or (_cluster_has(option, "m") and option.endswith("m")):
            module, module_args = (rest[k + 1], rest[k + 2:]) if k + 1 < len(rest) else ("", [])
            if module == "pip":
                return _pip_category(module_args), [], None
            return _MODULE_CATEGORIES.get(module) or EXECUTING, [], None
        if option == "-c" or (_cluster_has(option, "c") and option.endswith("c")):
            code = rest[k + 1] if k + 1 < len(rest) else ""
            return code_category(code), [], code
        k += 2 if option in _PYTHON_OPTIONS_WITH_ARGUMENT else 1
    if k < len(rest) and rest[k] != "-":
        return EXECUTING, [], None
    if body:
        return code_category(body), [], body
    return EXECUTING, [], None


def _script_interpreter(eval_flags: tuple[str, ...], perl_style: bool):
    """node/perl: ``-e CODE`` by the code; perl style also knows ``-i`` (in place) and ``-ne``/``-pe`` clusters."""
    def rule(args, body, depth, host):
        rest = args[1:]
        for k, option in enumerate(rest):
            if not option.startswith("-"):
                break
            if option in ("-v", "--version"):
                return EXPLORING, [], None
            if perl_style and _cluster_has(option, "i"):
                return CHANGING, [], None
            if option in eval_flags or (perl_style and _cluster_has(option, "e") and option.endswith("e")):
                code = rest[k + 1] if k + 1 < len(rest) else ""
                return code_category(code), [], code
        if len(args) > 1 and not args[-1].startswith("-"):
            return EXECUTING, [], None
        return (code_category(body), [], body) if body else (EXECUTING, [], None)
    return rule


_PIP_CHANGING = frozenset(("install", "uninstall", "download", "wheel"))


def _pip_category(args: list[str]) -> str:
    _, rest = _options(args, frozenset(("--index-url", "-i", "--python", "--cache-dir", "--log")))
    return CHANGING if rest and rest[0] in _PIP_CHANGING else EXPLORING


def _subcommand(changing: frozenset[str] = frozenset(), exploring: frozenset[str] | None = None,
                executing: frozenset[str] = frozenset(), with_argument: frozenset[str] = frozenset(),
                default: str = EXPLORING):
    """A program whose first plain word decides: listed sets, else ``default`` (no subcommand: exploring)."""
    def rule(args, body, depth, host):
        _, rest = _options(args[1:], with_argument)
        if not rest:
            return EXPLORING, [], None
        word = rest[0]
        if word in changing:
            return CHANGING, [], None
        if word in executing:
            return EXECUTING, [], None
        if exploring is not None and word in exploring:
            return EXPLORING, [], None
        return default, [], None
    return rule


def _sets(text: str) -> frozenset[str]:
    return frozenset(text.split())


_PACKAGE_CHANGING = _sets("install remove purge upgrade update autoremove dist-upgrade full-upgrade reinstall "
                          "add del erase downgrade")
_GIT_EXPLORING = _sets("status log diff show branch remote rev-parse ls-files describe blame grep shortlog reflog "
                       "ls-remote ls-tree cat-file config help version")
_SYSTEMCTL_EXPLORING = _sets("status is-active is-enabled is-failed is-system-running list-units list-unit-files "
                             "list-timers list-sockets list-jobs list-dependencies show cat help get-default")


def _simple_flag(letter: str, when: str, otherwise: str):
    """``when`` if an option cluster holds ``letter``, else ``otherwise``."""
    def rule(args, body, depth, host):
        for option in args[1:]:
            if _cluster_has(option, letter):
                return when, [], None
        return otherwise, [], None
    return rule


def _sed(args, body, depth, host):
    skip = False
    for option in args[1:]:
        if skip:
            skip = False
            continue
        if option in ("-e", "-f", "--expression", "--file", "-l"):
            skip = True
        elif option.startswith("--in-place") or re.fullmatch(r"-[nErsuz]*i.*", option):
            return CHANGING, [], None
    return EXPLORING, [], None


def _kill(args, body, depth, host):
    if any(option in ("-0", "-l", "-L", "--list", "-s0") for option in args[1:]):
        return EXPLORING, [], None
    return CHANGING, [], None


def _tee(args, body, depth, host):
    _, files = _options(args[1:])
    return (CHANGING if any(f not in _FILE_TARGETS_EXCLUDED for f in files) else UTILITIES), [], None


def _find(args, body, depth, host):
    nested: list[Invocation] = []
    category = EXPLORING
    k = 1
    while k < len(args):
        if args[k] in ("-delete", "-fprint", "-fprint0", "-fprintf", "-fls"):
            category = CHANGING
        if args[k] in ("-exec", "-execdir", "-ok", "-okdir"):
            end = k + 1
            while end < len(args) and args[end] not in (";", "+"):
                end += 1
            nested.extend(_run(args[k + 1:end], (), None, depth + 1, host, set()))
            k = end
        k += 1
    return category, nested, None


def _any_word(words: frozenset[str], when: str, otherwise: str):
    def rule(args, body, depth, host):
        return (when if any(a in words for a in args[1:]) else otherwise), [], None
    return rule


def _sysctl(args, body, depth, host):
    writes = any(a == "-w" or ("=" in a and not a.startswith("-")) for a in args[1:])
    return (CHANGING if writes else EXPLORING), [], None


def _mount(args, body, depth, host):
    _, rest = _options(args[1:], frozenset(("-t", "-o", "-L", "-U")))
    return (CHANGING if rest else EXPLORING), [], None


_CURL_WITH_ARGUMENT = _sets("-X --request -d --data --data-raw --data-binary --data-urlencode --json -F --form -T "
                            "--upload-file -o --output -H --header -u --user -A --user-agent -e --referer -m "
                            "--max-time --connect-timeout -w --write-out -x --proxy -b --cookie -c --cookie-jar "
                            "--retry --unix-socket --resolve -K --config -r --range")
_CURL_BODY = _sets("-d --data --data-raw --data-binary --data-urlencode --json -F --form -T --upload-file")


def curl_request(args: tuple[str, ...] | list[str]) -> tuple[str, str | None, list[str]]:
    """(method, output file or None, URLs) of a ``curl`` command's arguments."""
    method, output, urls, has_body = "GET", None, [], False
    k = 0
    while k < len(args):
        option = args[k]
        value = args[k + 1] if k + 1 < len(args) else ""
        if option in ("-X", "--request"):
            method = value.upper()
        elif option.startswith("--request="):
            method = option.split("=", 1)[1].upper()
        elif option in _CURL_BODY or option.startswith(("--data", "--json", "--form", "--upload-file")):
            has_body = True
        elif option in ("-o", "--output"):
            output = value
        elif option in ("-O", "--remote-name", "--remote-name-all"):
            output = "(remote name)"
        elif option in ("-I", "--head"):
            method = "HEAD"
        elif option.startswith("-X") and len(option) > 2 and not option.startswith("--"):
            method = option[2:].upper()
        elif option.startswith("-") and not option.startswith("--") and len(option) > 2:
            cluster = option[1:]
            if "O" in cluster:
                output = "(remote name)"
            if cluster.endswith("o"):
                output = value
                k += 1
            elif cluster.endswith("X"):
                method = value.upper()
                k += 1
            elif cluster.endswith("d"):
                has_body = True
                k += 1
            if "I" in cluster:
                method = "HEAD"
        elif not option.startswith("-"):
            urls.append(option)
        if option in _CURL_WITH_ARGUMENT:
            k += 1
        k += 1
    if has_body and method in ("GET", "HEAD"):
        method = "POST"
    return method, output, urls


def _curl(args, body, depth, host):
    method, output, _ = curl_request(args[1:])
    if method not in ("GET", "HEAD"):
        return EXECUTING, [], None
    if output is not None and output not in ("-", *_FILE_TARGETS_EXCLUDED):
        return CHANGING, [], None
    return EXPLORING, [], None


def _wget(args, body, depth, host):
    options = args[1:]
    if any(o.startswith(("--post-data", "--post-file", "--body-data", "--body-file")) or o in ("--method=POST",)
           for o in options):
        return EXECUTING, [], None
    if "--spider" in options:
        return EXPLORING, [], None
    for k, option in enumerate(options):
        target = None
        if option in ("-O", "--output-document") and k + 1 < len(options):
            target = options[k + 1]
        elif option.startswith("--output-document="):
            target = option.split("=", 1)[1]
        elif option.startswith("-") and not option.startswith("--") and "O" in option:
            tail = option.split("O", 1)[1]
            target = tail or (options[k + 1] if k + 1 < len(options) else "")
        if target is not None and target in ("-", *_FILE_TARGETS_EXCLUDED):
            return EXPLORING, [], None
    return CHANGING, [], None


_SSH_WITH_ARGUMENT = frozenset("-" + c for c in "bcDEeFIiJLlmOopPQRSWw")


def ssh_destination(args: tuple[str, ...] | list[str]) -> tuple[str | None, list[str]]:
    """(destination, remote command words) of an ``ssh`` command's arguments."""
    _, rest = _options(list(args), _SSH_WITH_ARGUMENT)
    if not rest:
        return None, []
    return rest[0], rest[1:]


def _ssh(args, body, depth, host):
    destination, remote = ssh_destination(args[1:])
    if remote:
        return UTILITIES, _line(" ".join(remote), depth + 1, destination), None
    return UTILITIES, (_line(body, depth + 1, destination) if body and destination else []), None


def _su(args, body, depth, host):
    for k, option in enumerate(args[1:], start=1):
        if option in ("-c", "--command") and k + 1 < len(args):
            return UTILITIES, _line(args[k + 1], depth + 1, host), None
    return UTILITIES, [], None


def _eval(args, body, depth, host):
    return UTILITIES, _line(" ".join(args[1:]), depth + 1, host), None


def _watch(args, body, depth, host):
    _, rest = _options(args[1:], _sets("-n --interval -d --differences -g -q --equexit"))
    return UTILITIES, (_line(" ".join(rest), depth + 1, host) if rest else []), None


def _netcat(args, body, depth, host):
    return (EXECUTING if any(_cluster_has(o, "l") or o == "--listen" for o in args[1:]) else EXPLORING), [], None


#: programs whose arguments decide their category (see the module docstring)
RULES: dict[str, _Rule] = {
    **dict.fromkeys(("bash", "sh", "dash", "zsh", "ksh", "ash"), _shell),
    **dict.fromkeys(("python", "python2", "python3", "pypy", "pypy3"), _python),
    **dict.fromkeys(("node", "nodejs"), _script_interpreter(("-e", "--eval", "-p", "--print"), perl_style=False)),
    "perl": _script_interpreter(("-e", "-E"), perl_style=True),
    **dict.fromkeys(("pip", "pip3"), lambda args, body, depth, host: (_pip_category(args[1:]), [], None)),
    **dict.fromkeys(("apt", "apt-get", "dnf", "yum", "apk", "conda"), _subcommand(changing=_PACKAGE_CHANGING)),
    "dpkg": _any_word(_sets("-i -r -P --install --remove --purge --unpack --configure"), CHANGING, EXPLORING),
    **dict.fromkeys(("npm", "yarn", "pnpm"),
                    _subcommand(changing=_sets("install i ci add uninstall remove rm update link"),
                                executing=_sets("start run run-script exec test x"))),
    "git": _subcommand(exploring=_GIT_EXPLORING, default=CHANGING, with_argument=_sets("-C -c --git-dir")),
    "systemctl": _subcommand(exploring=_SYSTEMCTL_EXPLORING, default=CHANGING),
    "service": _any_word(_sets("start stop restart reload force-reload enable disable"), CHANGING, EXPLORING),
    "crontab": _simple_flag("l", EXPLORING, CHANGING),
    "sed": _sed,
    "kill": _kill,
    "tee": _tee,
    "find": _find,
    "fuser": _simple_flag("k", CHANGING, EXPLORING),
    "ip": _any_word(_sets("add del delete set flush change replace append up down"), CHANGING, EXPLORING),
    "sysctl": _sysctl,
    "mount": _mount,
    "curl": _curl,
    "wget": _wget,
    "ssh": _ssh,
    "su": _su,
    "eval": _eval,
    "watch": _watch,
    **dict.fromkeys(("nc", "ncat", "netcat"), _netcat),
}
