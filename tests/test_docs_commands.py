"""Every command in README.md, CONTRIBUTING.md and docs/*.md is checked, so the docs cannot rot.

From each ```bash block: every `maekit ...`, `python -m maekit ...` and `torchrun ... -m
maekit ...` command (line continuations joined, `&&`/`;`/`|` chains split, comments dropped)
is parsed by maekit's real parser; the cheap ones (`maekit models`, `maekit recipes`,
`--help`, `--version`, `--print_config`) are run. Every `bash scripts/launch/X.sh ...` and
`sbatch ... slurm.sbatch NAME ...` is built by the launch script in DRY_RUN mode with the
documented variables, and the maekit command it prints is parsed too.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from maekit.cli import build_parser
from tests.conftest import REPO

DOCS = sorted([REPO / "README.md", REPO / "CONTRIBUTING.md", *(REPO / "docs").glob("*.md")])
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_LANGS = {"bash", "sh", "shell", "console"}
ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Commands cheap enough to run for real (no training, no data).
CHEAP_FLAGS = {"--help", "-h", "--version", "--print_config"}
CHEAP_COMMANDS = {"models", "recipes"}


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    env: tuple[tuple[str, str], ...]  # VAR=value assignments before the command
    words: tuple[str, ...]  # the command's words, env assignments removed

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"


def shell_commands(path: Path) -> list[Command]:
    """The simple commands of a file's shell code blocks."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) not in SHELL_LANGS:
            continue
        first_line = text.count("\n", 0, m.start(2)) + 1
        body = m.group(2)
        logical: list[tuple[int, str]] = []
        start, buf = None, ""
        for i, line in enumerate(body.splitlines()):
            line = re.sub(r"^\$ ", "", line)
            if start is None:
                start = first_line + i
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            logical.append((start, buf + line))
            start, buf = None, ""
        for lineno, line in logical:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words: list[str] = []
            for tok in [*lexer, ";"]:
                if tok and set(tok) <= set(";&|"):
                    if words:
                        env = tuple(tuple(w.split("=", 1)) for w in words if ENV_ASSIGN.match(w))
                        rest = words[len(env) :]
                        if rest:
                            out.append(Command(f"{path.name}:{lineno}", env, tuple(rest)))
                    words = []
                else:
                    words.append(tok)
    return out


def maekit_argv(cmd: Command) -> list[str] | None:
    """The arguments after `maekit` / `-m maekit`, or None when the command is not maekit's."""
    w = list(cmd.words)
    if w[0] == "maekit":
        return w[1:]
    for i in range(len(w) - 1):
        if w[i] == "-m" and w[i + 1] == "maekit":
            return w[i + 2 :]
    return None


def placeholders_removed(args: list[str]) -> list[str]:
    """`...` in a doc command stands for flags said elsewhere."""
    return [a for a in args if a != "..."]


ALL = [c for p in DOCS if p.exists() for c in shell_commands(p)]
MAEKIT = [c for c in ALL if maekit_argv(c) is not None]
LAUNCH = [c for c in ALL if any(re.search(r"scripts/launch/\w+\.(sh|sbatch)$", w) for w in c.words)]


def test_the_docs_have_commands() -> None:
    # Not vacuous: the README and the docs pages hold many commands, and each page is read.
    assert len(MAEKIT) >= 20, [str(c) for c in MAEKIT]
    assert {c.where.split(":")[0] for c in MAEKIT} >= {"README.md"}
    assert len(LAUNCH) >= 3


def test_the_extractor_handles_continuations_chains_and_torchrun(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n```bash\nbash scripts/install.sh && maekit pretrain --epochs 2 \\\n"
        "    --norm_pix_loss   # comment\nA=1 torchrun --nproc_per_node 8 -m maekit knn --k 3\n"
        "python3 -m maekit models; echo done\n```\n```python\nmaekit.load_checkpoint(x)\n```\n"
    )
    cmds = shell_commands(doc)
    assert [maekit_argv(c) for c in cmds] == [
        None,
        ["pretrain", "--epochs", "2", "--norm_pix_loss"],
        ["knn", "--k", "3"],
        ["models"],
        None,
    ]
    assert cmds[2].env == (("A", "1"),) and cmds[1].where == "x.md:3"


@pytest.mark.parametrize("cmd", MAEKIT, ids=str)
def test_every_maekit_command_parses(cmd: Command) -> None:
    args = placeholders_removed(maekit_argv(cmd))
    parser = build_parser()
    if CHEAP_FLAGS & {"--help", "-h", "--version"} & set(args):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(args)
        assert e.value.code == 0, str(cmd)
        return
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:  # argparse printed the reason to stderr
        pytest.fail(f"{cmd} does not parse (exit {e.code})")
    assert ns.command == args[0]


CHEAP = [
    c
    for c in MAEKIT
    if maekit_argv(c) and (maekit_argv(c)[0] in CHEAP_COMMANDS or CHEAP_FLAGS & set(maekit_argv(c)))
]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", CHEAP, ids=str)
def test_cheap_commands_run(cmd: Command) -> None:
    args = placeholders_removed(maekit_argv(cmd))
    env = {**os.environ, "PYTHONPATH": str(REPO), **dict(cmd.env)}
    r = subprocess.run(
        [sys.executable, "-m", "maekit", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"{cmd}\n{r.stderr[-2000:]}"
    assert r.stdout.strip(), str(cmd)


def launch_invocation(cmd: Command) -> tuple[Path, list[str]]:
    """(launch script, its arguments) of `bash scripts/launch/X.sh ARGS` or
    `sbatch [OPTIONS] scripts/launch/slurm.sbatch NAME ARGS` (run as X.sh ARGS)."""
    w = list(cmd.words)
    i = next(i for i, x in enumerate(w) if re.search(r"scripts/launch/\w+\.(sh|sbatch)$", x))
    script = REPO / w[i]
    if script.name == "slurm.sbatch":
        return REPO / "scripts" / "launch" / f"{w[i + 1]}.sh", w[i + 2 :]
    return script, w[i + 1 :]


@pytest.mark.parametrize("cmd", LAUNCH, ids=str)
def test_every_launch_command_builds_a_maekit_command_that_parses(cmd: Command) -> None:
    script, args = launch_invocation(cmd)
    assert script.is_file(), f"{cmd}: no {script}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PADDLE_"))}
    env.update({"DRY_RUN": "1", "MASTER_ADDR": "node0", **dict(cmd.env)})
    for word in cmd.words:  # sbatch --export=ALL,VAR=value
        if word.startswith("--export="):
            env.update(kv.split("=", 1) for kv in word.split("=", 1)[1].split(",") if "=" in kv)
    r = subprocess.run(
        ["bash", str(script), *placeholders_removed(args)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"{cmd}\n{r.stderr}"
    words = shlex.split(r.stdout.strip())
    i = words.index("-m")
    parser = build_parser()
    try:
        parser.parse_args(words[i + 2 :])
    except SystemExit as e:
        pytest.fail(f"{cmd} builds {r.stdout.strip()}, which does not parse (exit {e.code})")


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", [p for p in DOCS if p.exists()], ids=lambda p: p.name)
def test_relative_links_point_at_files(doc: Path) -> None:
    """A moved or renamed page breaks no link (web links and anchors are not checked)."""
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.name}: link to {target}, which does not exist"
