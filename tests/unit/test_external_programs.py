"""Issue 14, item 1: every external program the code and the tests execute is put
on a fresh machine by our scripts.

:data:`PROGRAMS` lists each program with where it comes from: a Debian package
that ``scripts/install-system-deps`` installs (checked against the script's text),
BIRD from ``scripts/install-bird``, the project's virtualenv from
``scripts/setup-dev``, or Debian's essential set (on every Debian system, the
minimal container image included). :func:`executed` scans the Python sources of
``moenet_core/``, ``plugins/``, ``contrib/``, ``scripts/`` and ``tests/`` for
subprocess calls and finds the program each one runs:

- an argv whose first element is a string literal names the program (``ip netns
  exec <ns> <prog>`` also names ``<prog>``);
- a function that forwards its ``*args`` into such a call (``NetNS.run(*cmd)``, the
  labs' helpers) is a *wrapper*: a call to it with a string literal first runs
  that program;
- any other first element (a configured path, ``sys.executable``...) must be
  listed in :data:`INDIRECT`, which says what it runs.

A new program, or a new indirect call site, fails the test until it is listed
here *and* installed by a script. On main at 0e980bb ``systemd-analyze``,
``sysctl`` (procps) and ``curl`` were run but installed by nothing.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("moenet_core", "plugins", "contrib", "scripts", "tests")
SYSTEM_DEPS = ROOT / "scripts" / "install-system-deps"
INSTALL_BIRD = ROOT / "scripts" / "install-bird"
SETUP_DEV = ROOT / "scripts" / "setup-dev"

#: Debian's Essential: yes packages (and ``passwd``, priority required): present on
#: every Debian system, the minimal container image included.
ESSENTIAL = frozenset(
    {"bash", "coreutils", "dash", "dpkg", "util-linux", "passwd", "sed", "grep", "findutils"}
)

#: program -> (how it gets there, Debian package or None).
#: "system-deps": ``scripts/install-system-deps`` installs the package;
#: "bird": ``scripts/install-bird``; "venv": ``scripts/setup-dev`` (the project's
#: .venv, its console scripts and the Python running the tests); "essential": see
#: :data:`ESSENTIAL`.
PROGRAMS: dict[str, tuple[str, str | None]] = {
    "ip": ("system-deps", "iproute2"),
    "nft": ("system-deps", "nftables"),
    "iptables": ("system-deps", "iptables"),
    "ip6tables": ("system-deps", "iptables"),
    "wg": ("system-deps", "wireguard-tools"),
    "wireguard-go": ("system-deps", "wireguard-go"),
    "ping": ("system-deps", "iputils-ping"),
    "traceroute": ("system-deps", "traceroute"),
    "sysctl": ("system-deps", "procps"),
    "curl": ("system-deps", "curl"),
    "promtool": ("system-deps", "prometheus"),
    "systemd-analyze": ("system-deps", "systemd"),
    "bird": ("bird", None),
    "birdc": ("bird", None),
    "python": ("venv", None),
    "moenet-agent": ("venv", None),
    "ruff": ("venv", None),
    "bash": ("essential", "bash"),
    "sh": ("essential", "dash"),
    "cat": ("essential", "coreutils"),
    "sleep": ("essential", "coreutils"),
    "useradd": ("essential", "passwd"),
    "userdel": ("essential", "passwd"),
    "groupadd": ("essential", "passwd"),
    "groupdel": ("essential", "passwd"),
    "scripts/install-bird": ("repo", None),
}

#: Call sites whose program is not a literal: (file, the argv's first element as
#: written) -> the program it runs.
INDIRECT: dict[tuple[str, str], str] = {
    # the configured binaries (bird.binary, nftables.nftPath, wireguard.wireguardGo)
    ("plugins/moenet_bird/apply.py", "binary"): "bird",
    ("plugins/moenet_nftables/backend.py", "cfg.nft_path"): "nft",
    ("plugins/moenet_wireguard/daemon.py", "binary"): "wireguard-go",
    # the updater: the new release's venv python (pip) and the operator's restartCommand
    ("plugins/moenet_updater/install.py", "*argv"): "python",
    # BIRD under test, started through `ip netns exec`
    ("plugins/moenet_bird/testing.py", "*cmd"): "bird",
    ("tests/component/test_bird_client.py", "*bird"): "bird",
    ("tests/unit/test_bird_cli.py", "bird"): "bird",
    ("tests/unit/test_sessions_desired.py", "bird"): "bird",
    ("tests/unit/test_bird_denylist.py", "bird"): "bird",
    ("tests/unit/test_bird_grc.py", "bird"): "bird",
    ("plugins/moenet_wireguard/keys.py", "wg"): "wg",  # shutil.which("wg"): wg pubkey
    ("tests/unit/test_bird_render.py", "str(bird)"): "bird",
    ("tests/unit/test_bird_render.py", "str(bird_bin)"): "bird",
    ("tests/unit/test_bird_render.py", "str(ROOT / 'scripts/install-bird')"): "scripts/install-bird",
    ("tests/component/test_bird_client.py", "str(ROOT / 'scripts/install-bird')"): "scripts/install-bird",
    # each Debian suite's BIRD 3 (scripts/install-bird --all-debian)
    ("tests/unit/test_bird_debian_versions.py", "str(INSTALL_BIRD)"): "scripts/install-bird",
    ("tests/unit/test_bird_debian_versions.py", "str(entry.bird)"): "bird",
    ("tests/component/test_metrics_promtool.py", "promtool()"): "promtool",
    # the labs and the demo: the installed agent and birdc
    ("contrib/lab/lab.py", "agent_bin"): "moenet-agent",  # spawn_agent (the lab's, the crash rig's)
    ("contrib/lab/lab.py", "self.birdc_bin"): "birdc",
    ("contrib/lab/network.py", "self.agent_bin"): "moenet-agent",
    ("contrib/demo/demo.py", "agent_bin"): "moenet-agent",
    ("tests/helpers/installed.py", "str(bin_dir / 'moenet-agent')"): "moenet-agent",
    ("tests/e2e/test_installed.py", "str(installed / 'moenet-agent')"): "moenet-agent",
    ("tests/e2e/test_installed.py", "str(installed / 'python')"): "python",
    ("tests/e2e/test_installed.py", "str(py)"): "python",
    ("tests/e2e/test_updater_e2e.py", "str(venv / 'bin' / 'moenet-agent')"): "moenet-agent",
    ("tests/e2e/test_updater_e2e.py", "str(venv / 'bin' / 'python')"): "python",
    ("tests/e2e/test_webhook_plugin.py", "str(bin_dir / args[0])"): "moenet-agent",
    ("tests/e2e/test_webhook_plugin.py", "*pip"): "python",
    ("scripts/fix-core-imports.py", "*ruff"): "ruff",
    ("tests/e2e/test_updater_e2e.py", "argv"): "moenet-agent",  # the rollback unit's command
    ("tests/unit/test_wireguard_daemon.py", "BASH"): "bash",
    # moenet-agent adopt against a node laid out as the Go agent leaves it
    ("tests/e2e/test_adopt_go_agent.py", "AGENT"): "moenet-agent",
    ("tests/e2e/test_adopt_go_agent.py", "str(fake_go)"): "sleep",  # a copy named moenet-agent
    ("tests/helpers/goagent.py", "BIRDC"): "birdc",
    ("tests/component/test_adopt_mismatch.py", "AGENT"): "moenet-agent",
    ("tests/unit/test_adopt.py", "str(BIRD)"): "bird",
}

_EXEC_FUNCS = frozenset(
    {
        "subprocess.run",
        "subprocess.Popen",
        "subprocess.call",
        "subprocess.check_call",
        "subprocess.check_output",
        "asyncio.create_subprocess_exec",
        "asyncio.create_subprocess_shell",
        "os.system",
        "os.popen",
        "os.execv",
        "os.execvp",
        "os.execve",
        "os.execvpe",
        "os.execl",
        "os.execlp",
        "os.posix_spawn",
        "os.posix_spawnp",
        "pty.spawn",
    }
)
_ARGV_IS_ARGS = frozenset({"asyncio.create_subprocess_exec", "os.execl", "os.execlp"})


def python_files() -> Iterator[Path]:
    """Every Python source, and the scripts in ``scripts/`` with a python shebang.
    (The shell scripts are the installers themselves: they use apt-get, dpkg-deb
    and the essential set.)"""
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if not any(part in (".venv", "__pycache__", "build") for part in path.parts):
                yield path
    for path in sorted((ROOT / "scripts").iterdir()):
        if (
            path.is_file()
            and path.suffix == ""
            and "python" in path.read_text(errors="replace").split("\n", 1)[0]
        ):
            yield path


def _argv_of(call: ast.Call, func: str) -> list[ast.expr] | None:
    """The argv elements of an exec call, as written (None: not a literal list)."""
    if func in _ARGV_IS_ARGS:
        return list(call.args)
    if not call.args:
        return None
    first = call.args[0]
    if func in ("os.execv", "os.execvp", "os.execve", "os.execvpe", "os.posix_spawn", "os.posix_spawnp"):
        return [first]
    if isinstance(first, ast.List | ast.Tuple):
        return list(first.elts)
    return [first]


def _flatten(argv: list[ast.expr]) -> list[ast.expr]:
    """``*("useradd", "--system")`` spliced into the argv it stands for."""
    out: list[ast.expr] = []
    for elt in argv:
        if isinstance(elt, ast.Starred) and isinstance(elt.value, ast.List | ast.Tuple):
            out += _flatten(list(elt.value.elts))
        else:
            out.append(elt)
    return out


def _programs_in(argv: list[ast.expr]) -> list[ast.expr]:
    """The argv elements that name a program: the first, and the one after
    ``ip netns exec <ns>``."""
    argv = _flatten(argv)
    out = argv[:1]
    words = [e.value if isinstance(e, ast.Constant) else None for e in argv[:4]]
    if words[:3] == ["ip", "netns", "exec"] and len(argv) > 4:
        out.append(argv[4])
    return out


#: A wrapper: ("method" or "function", its name, the position of the program
#: among a call's positional arguments).
Wrapper = tuple[str, str, int]


class _Scanner(ast.NodeVisitor):
    """One file: the programs its exec calls (and calls of known wrappers) run,
    and the wrappers it defines."""

    def __init__(self, rel: str, wrappers: set[Wrapper], imported: set[str] | None = None) -> None:
        self.rel = rel
        self.methods = {name: at for kind, name, at in wrappers if kind == "method"}
        self.functions = {name: at for kind, name, at in wrappers if kind == "function"}
        self.imported = imported or set()
        self.found: list[tuple[str, int]] = []  # (program, or "?<expression>" when unexplained; line)
        self.defined: set[Wrapper] = set()
        self._stack: list[ast.AST] = []
        self.local_functions: set[str] = set()

    def _enter(self, node: ast.AST) -> None:
        self._stack.append(node)
        self.generic_visit(node)
        self._stack.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._enter(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._enter(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._enter(node)

    def _function(self) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        for node in reversed(self._stack):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    def _class_defines(self, name: str) -> bool:
        """The class around this point has a wrapper method ``name``."""
        for node in reversed(self._stack):
            if isinstance(node, ast.ClassDef):
                return name in self.class_wrappers.get(node.name, set())
        return False

    class_wrappers: dict[str, set[str]]

    def _literal_at(self, node: ast.Call, at: int) -> ast.expr | None:
        """The wrapper call's program argument when it is a string literal. (A
        non-literal one is forwarded from elsewhere, where it is judged.)"""
        args = node.args[: at + 1]
        if len(args) <= at or any(isinstance(a, ast.Starred) for a in args):
            return None
        arg = args[at]
        return arg if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None

    def visit_Call(self, node: ast.Call) -> None:
        func = ast.unparse(node.func)
        if func in _EXEC_FUNCS:
            for elt in _programs_in(_argv_of(node, func) or []):
                self._program(elt, node.lineno)
        elif isinstance(node.func, ast.Attribute) and node.func.attr in self.methods:
            receiver = ast.unparse(node.func.value)
            program = self._literal_at(node, self.methods[node.func.attr])
            if program is not None and (receiver != "self" or self._class_defines(node.func.attr)):
                self._program(program, node.lineno)
        elif isinstance(node.func, ast.Name) and node.func.id in self.functions:
            program = self._literal_at(node, self.functions[node.func.id])
            if program is not None and node.func.id in self.imported | self.local_functions:
                self._program(program, node.lineno)
        self.generic_visit(node)

    def _program(self, elt: ast.expr, line: int) -> None:
        if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
            self.found.append((elt.value.split()[0].rpartition("/")[2], line))
            return
        text = ast.unparse(elt)
        fn = self._function()
        vararg = fn.args.vararg.arg if fn is not None and fn.args.vararg is not None else None
        if isinstance(elt, ast.Starred) and vararg is not None and ast.unparse(elt.value) == vararg:
            # The function forwards its own *args as the program: an exec wrapper.
            assert fn is not None
            inside_class = any(isinstance(n, ast.ClassDef) for n in self._stack)
            at = len(fn.args.posonlyargs) + len(fn.args.args) - (1 if inside_class else 0)
            self.defined.add(("method" if inside_class else "function", fn.name, at))
            if (self.rel, text) not in INDIRECT:
                return
        if text == "sys.executable":
            self.found.append(("python", line))
            return
        self.found.append((INDIRECT.get((self.rel, text), f"?{text}"), line))


def _scan(
    rel: str, tree: ast.Module, wrappers: set[Wrapper], class_wrappers: dict[str, set[str]]
) -> _Scanner:
    scan = _Scanner(rel, wrappers, imported=_imported_names(tree))
    scan.class_wrappers = class_wrappers
    scan.local_functions = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    scan.visit(tree)
    return scan


def _imported_names(tree: ast.Module) -> set[str]:
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def _class_wrappers(tree: ast.Module, wrappers: set[Wrapper]) -> dict[str, set[str]]:
    """class name -> the names of its wrapper methods (for calls on ``self``)."""
    methods = {name for kind, name, _ in wrappers if kind == "method"}
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in methods:
                    out.setdefault(node.name, set()).add(item.name)
    return out


@functools.cache
def executed() -> dict[str, list[str]]:
    """program -> the places that run it (``file:line``); an unexplained
    indirect call site shows as ``?<expression>``."""
    trees = {
        str(p.relative_to(ROOT)): ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        for p in python_files()
    }
    wrappers: set[Wrapper] = set()
    for _ in range(3):  # wrappers of wrappers
        for rel, tree in trees.items():
            wrappers |= _scan(rel, tree, wrappers, {}).defined
    out: dict[str, list[str]] = {}
    for rel, tree in trees.items():
        own = {w for w in _scan(rel, tree, wrappers, {}).defined}
        scan = _scan(rel, tree, wrappers, _class_wrappers(tree, own))
        for program, line in scan.found:
            out.setdefault(program, []).append(f"{rel}:{line}")
    return out


# ------------------------------------------------------------------ the tests


def test_every_program_the_code_runs_is_listed() -> None:
    found = executed()
    unknown = {p: where for p, where in found.items() if p not in PROGRAMS}
    assert unknown == {}, (
        "programs run but not listed in PROGRAMS (add each with the Debian package that provides it, "
        f"and install that package in scripts/install-system-deps): {unknown}"
    )


def test_the_scan_finds_what_it_should() -> None:
    """The scan is not vacuous: it sees the agent's own daemons and the tests' tools."""
    found = executed()
    for program in (
        "ip",
        "nft",
        "wg",
        "wireguard-go",
        "ping",
        "sysctl",
        "bird",
        "promtool",
        "systemd-analyze",
    ):
        assert program in found, program
    assert any(w.startswith("moenet_core/testing/netns.py") for w in found["ip"])
    assert any(w.startswith("plugins/moenet_nftables/") for w in found["nft"])
    assert any(w.startswith("tests/component/") for w in found["wg"])  # through NetNS.run


def test_the_scan_catches_a_new_program_and_an_unexplained_call(tmp_path: Path) -> None:
    code = (
        "import asyncio, subprocess\n"
        "def run(*cmd):\n"
        "    return subprocess.run(['ip', 'netns', 'exec', 'x', *cmd])\n"
        "async def f(path):\n"
        "    subprocess.run(['tcpdump', '-i', 'any'])\n"
        "    run('ethtool', 'eth0')\n"
        "    await asyncio.create_subprocess_exec(path, 'x')\n"
    )
    tree = ast.parse(code)
    wrappers = _scan("probe.py", tree, set(), {}).defined
    assert wrappers == {("function", "run", 0)}
    scan = _scan("probe.py", tree, wrappers, {})
    assert sorted(p for p, _ in scan.found) == ["?path", "ethtool", "ip", "tcpdump"]


def _system_deps_text() -> str:
    return SYSTEM_DEPS.read_text(encoding="utf-8")


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_each_program_is_installed_by_our_scripts(program: str) -> None:
    how, package = PROGRAMS[program]
    if how == "system-deps":
        # the script's own pattern: check for the command, else queue its package
        line = re.compile(
            rf"^command -v {re.escape(program)} >/dev/null \|\| need\+=\({re.escape(package or '')}\)$", re.M
        )
        assert line.search(_system_deps_text()), (
            f"scripts/install-system-deps must install {package} for {program}: add\n"
            f"command -v {program} >/dev/null || need+=({package})"
        )
    elif how == "bird":
        tools = re.search(r"^TOOLS=\(([^)]*)\)$", INSTALL_BIRD.read_text(encoding="utf-8"), re.M)
        assert tools and program in tools.group(1).split(), f"scripts/install-bird does not provide {program}"
    elif how == "venv":
        text = SETUP_DEV.read_text(encoding="utf-8")
        assert "python -m venv" in text.replace('"$PYTHON"', "python") and "pip install" in text
        if program == "ruff":
            assert re.search(r'"ruff[>=<]', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        if program == "moenet-agent":
            assert re.search(r"^moenet-agent = ", (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    elif how == "essential":
        assert package in ESSENTIAL, f"{package} is not in Debian's essential set"
    elif how == "repo":
        assert (ROOT / program).is_file()
    else:
        pytest.fail(f"{program}: unknown source {how!r}")


def test_every_package_the_script_installs_is_listed() -> None:
    """The other direction: no package is installed for a program nobody runs."""
    installed = set(
        re.findall(r"^command -v (\S+) >/dev/null \|\| need\+=\((\S+)\)$", _system_deps_text(), re.M)
    )
    listed = {(p, pkg) for p, (how, pkg) in PROGRAMS.items() if how == "system-deps"}
    assert installed == listed
