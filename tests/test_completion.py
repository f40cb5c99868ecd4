"""Shell completion: the scripts of `mountfs completion bash|zsh` load cleanly, and bash's
completion function, driven as bash drives it, completes commands, options and saved remotes
(asked of this tree's `mountfs remote list`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

import mountfs
from conftest import run_cli


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `mountfs` is this tree's, and a user with the remotes work and home."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    root = Path(mountfs.__file__).resolve().parent.parent
    wrapper = bin_dir / "mountfs"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={root} PYTHONSAFEPATH=1 exec {sys.executable} "
                       f"-m mountfs \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    (tmp_path / "store").mkdir()
    for name in ("work", "home"):
        run_cli("remote", "add", name, str(tmp_path / "store"), env=env)
    return env


def script(shell: str, tmp_path: Path) -> Path:
    path = tmp_path / f"mountfs.{shell}"
    path.write_text(run_cli("completion", shell).stdout)
    return path


def complete_bash(words: list[str], script_path: Path, env: dict[str, str]) -> list[str]:
    """COMPREPLY for the command line `words` (the last one being completed), computed by the
    function `complete -p mountfs` names, as bash calls it at a Tab."""
    line = " ".join(words)
    program = f"""
source {script_path} || exit 3
spec=$(complete -p mountfs) || exit 4
function=$(sed -E 's/.* -F ([^ ]+) .*/\\1/' <<<"$spec")
COMP_WORDS=({' '.join(repr(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}
COMP_POINT={len(line)}
"$function" mountfs "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash(shell_env: dict[str, str], tmp_path: Path) -> None:
    path = script("bash", tmp_path)
    assert complete_bash(["mountfs", "mo"], path, shell_env) == ["mount"]
    assert complete_bash(["mountfs", "rem"], path, shell_env) == ["remote"]
    assert "--cache-size" in complete_bash(["mountfs", "mount", "--cache-s"], path, shell_env)
    assert "--s3-endpoint-url" in complete_bash(["mountfs", "doctor", "--s3-e"], path,
                                                shell_env)
    assert complete_bash(["mountfs", "mount", "wo"], path, shell_env) == ["work:"]
    assert set(complete_bash(["mountfs", "doctor", ""], path, shell_env)) >= {"work:", "home:"}
    assert complete_bash(["mountfs", "remote", "show", "h"], path, shell_env) == ["home"]
    assert complete_bash(["mountfs", "remote", "delete", ""], path, shell_env) == \
        ["home", "work"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh(shell_env: dict[str, str], tmp_path: Path) -> None:
    """An interactive zsh in a pseudo-terminal, the script loaded as the README says
    (`eval "$(mountfs completion zsh)"` after compinit): Tab completes a command, a remote
    as `NAME:` (no space after: the path may follow) and a remote's name."""
    path = script("zsh", tmp_path)
    z = pexpect.spawn("zsh", ["-f", "-i"], env={**shell_env, "TERM": "dumb"},
                      encoding="utf-8", timeout=30)
    try:
        z.sendline(f"PS1='ZP> '; autoload -U compinit; compinit -u -d {tmp_path}/zcompdump; "
                   f"eval \"$(<{path})\"; print LOADED $_comps[mountfs]")
        z.expect("LOADED _shtab_mountfs")
        for typed, completed in [("mountfs mo", "mount "), ("mountfs mount wo", "work:"),
                                 ("mountfs doctor ho", "home:"),
                                 ("mountfs remote show w", "ork "),
                                 ("mountfs mount --cache-s", "ize ")]:
            z.expect("ZP> ")
            z.send(typed + "\t")
            z.expect_exact(completed)
            z.send("\x03")  # abandon the line: a new prompt
    finally:
        z.close(force=True)
