"""What a relaunch checks before it runs: the code commits and the datasets of the spec."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from relive.pipeline import datasets
from relive.registry.v1 import registry_pb2


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False, timeout=30
    )


def _local_repo(ref: registry_pb2.CodeRef, code_path: Sequence[str]) -> Path | None:
    candidate = Path(ref.repo)
    if ref.repo and candidate.is_dir():
        return candidate
    for p in code_path:
        top = _git(Path(p), "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            continue
        root = Path(top.stdout.strip())
        url = _git(root, "remote", "get-url", "origin").stdout.strip()
        if not ref.repo or url == ref.repo or str(root) == ref.repo:
            return root
    return None


def code_problems(refs: Sequence[registry_pb2.CodeRef], code_path: Sequence[str]) -> list[str]:
    """Why each code ref cannot be run as recorded: an unreachable commit, or changed code."""
    problems = []
    for ref in refs:
        if not ref.commit:
            continue
        repo = _local_repo(ref, code_path)
        where = ref.module or ref.path
        if repo is None:
            problems.append(
                f"code ref {where}: repository {ref.repo or '?'} is not reachable "
                f"here, so commit {ref.commit[:12]} cannot be checked out"
            )
            continue
        if _git(repo, "cat-file", "-e", f"{ref.commit}^{{commit}}").returncode != 0:
            problems.append(
                f"code ref {where}: commit {ref.commit[:12]} cannot be reached in {repo}"
            )
            continue
        if ref.path and not ref.dirty:
            diff = _git(repo, "diff", "--quiet", ref.commit, "--", ref.path)
            if diff.returncode == 1:
                problems.append(
                    f"code ref {where}: {ref.path} differs from commit {ref.commit[:12]}"
                )
    return problems


def dataset_problems(refs: Sequence[registry_pb2.DatasetRef]) -> list[str]:
    problems = []
    for ref in refs:
        try:
            digest, _ = datasets.content_hash(ref.uri)
        except (OSError, ValueError) as e:
            problems.append(f"dataset {ref.uri} cannot be read: {e}")
            continue
        if digest != ref.sha256:
            problems.append(
                f"dataset {ref.uri} changed: sha256 {ref.sha256[:12]} was recorded, "
                f"it is {digest[:12]} now"
            )
    return problems
