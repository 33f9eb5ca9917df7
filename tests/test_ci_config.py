"""The CI job files parse, have the expected shape, and run only what the project has.

No network. The checker reads the shell of every GitLab script and GitHub `run`
step, finds the commands in it, and checks those that refer to the project:
`ci/...` scripts exist and are executable, `tapmig` subcommands and their options
are accepted by `harness.cli.parser()`, `pytest` options and `-m` markers are
known to this project's pytest, and `from harness... import` names exist.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.campaign import plan
from harness.cli.parser import parser
from harness.errors import TapmigError
from harness.guest import assets
from harness.qemu import build, source
from tests.support import REPO

ROOT = REPO
GITLAB = ROOT / "ci" / "gitlab-ci.yml"
GITHUB = ROOT / ".github" / "workflows" / "tapmig.yml"
README = ROOT / "ci" / "README.md"
VARIABLES = ("QEMU_SOURCE", "QEMU_REF", "QEMU_PATCHES", "TAPMIG_ACCEL", "TAPMIG_ITERATIONS",
             "TAPMIG_THRESHOLD")
# Top-level GitLab keys that are not jobs.
GITLAB_GLOBALS = {"default", "include", "stages", "variables", "workflow", "image", "services",
                  "cache", "before_script", "after_script", "spec"}


class ConfigError(Exception):
    """A job file that cannot even be read as a CI definition."""


# --- reading the job files -------------------------------------------------------------------

def load(text: str, name: str) -> dict[Any, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: the top level is not a mapping")
    return doc


def _strings(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ConfigError(f"{where}: expected a string or a list of strings")
    return items


def gitlab_jobs(doc: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    """Every job (hidden `.templates` aside) with what it `extends` merged in, as the
    runner sees it; each checked to have a script."""
    jobs = {str(k): v for k, v in doc.items()
            if k not in GITLAB_GLOBALS and not str(k).startswith(".")}
    if not jobs:
        raise ConfigError("GitLab: no job defined")
    for name, job in jobs.items():
        if not isinstance(job, dict):
            raise ConfigError(f"GitLab job {name!r} has no script")
        for template in _strings(job.get("extends", []), f"GitLab job {name!r} extends"):
            if not isinstance(doc.get(template), dict):
                raise ConfigError(f"GitLab job {name!r} extends {template!r}, which is absent")
            job = jobs[name] = {**doc[template], **job}
        if "script" not in job:
            raise ConfigError(f"GitLab job {name!r} has no script")
        _strings(job["script"], f"GitLab job {name!r} script")
    return jobs


def gitlab_script(job: dict[str, Any]) -> str:
    """before_script + script as one shell script, the way the runner executes them."""
    lines: list[str] = []
    for key in ("before_script", "script"):
        lines += _strings(job.get(key, []), key)
    return "\n".join(lines)


def github_jobs(doc: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    """Every job, each checked to have steps that either use an action or run a script."""
    # YAML 1.1 reads a bare `on` key as the boolean true.
    if not (doc.get("on") or doc.get(True)):
        raise ConfigError("GitHub: the workflow has no `on` triggers")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise ConfigError("GitHub: no jobs")
    for name, job in jobs.items():
        steps = job.get("steps") if isinstance(job, dict) else None
        if not isinstance(steps, list) or not steps:
            raise ConfigError(f"GitHub job {name!r} has no steps")
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or ("uses" in step) == ("run" in step):
                raise ConfigError(f"GitHub job {name!r} step {i}: needs exactly one of uses/run")
            if "run" in step and not isinstance(step["run"], str):
                raise ConfigError(f"GitHub job {name!r} step {i}: run is not a string")
    return {str(k): v for k, v in jobs.items()}


def github_scripts(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


# --- finding the commands in a shell script --------------------------------------------------

_ASSIGN = re.compile(r"^[A-Za-z_]\w*\+?=")
_REDIRECTS = {"<", ">", ">>", "<>", ">&", "<&", "&>", ">|"}
_PREFIXES = {"if", "then", "else", "elif", "while", "until", "do", "!", "{", "}", "exec",
             "time", "command", "sudo", "env"}


def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script as words, arrays `"${a[@]}"` expanded.

    Not a shell parser: enough to find the programs a CI script runs and their
    arguments. Command substitutions `$(...)` count as commands of their own.
    """
    text = re.sub(r"\\\n", " ", script)
    text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    lex = shlex.shlex(text, posix=True, punctuation_chars="();<>|&\n")
    lex.whitespace, lex.whitespace_split, lex.commenters = " \t\r", True, ""
    tokens = list(lex)
    arrays: dict[str, list[str]] = {}
    out: list[list[str]] = []
    current: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "(" and current and (m := re.match(r"^(\w+)(\+?)=$", current[-1])):
            end = next((j for j in range(i + 1, len(tokens)) if tokens[j].startswith(")")),
                       len(tokens))
            name, words = m.group(1), tokens[i + 1 : end]
            arrays[name] = (arrays.get(name, []) if m.group(2) else []) + words
            current.pop()
            i = end + 1
            continue
        if tok in _REDIRECTS:
            i += 2  # the operator and its file
            continue
        if set(tok) <= set("();<>|&\n"):
            out.append(current)
            current = []
        else:
            current.append(tok)
        i += 1
    out.append(current)

    def expand(words: list[str]) -> list[str]:
        result: list[str] = []
        for w in words:
            m = re.fullmatch(r"\$\{(\w+)\[@\]\}", w)
            result += arrays.get(m.group(1), []) if m else [w]
        return result

    found = []
    for words in out:
        while words and (words[0] in _PREFIXES or _ASSIGN.match(words[0])):
            words = words[1:]
        if words:
            found.append(expand(words))
    return found


# --- checking them against the project ------------------------------------------------------

@dataclass(frozen=True)
class Project:
    root: Path
    pytest_options: frozenset[str]
    markers: frozenset[str]
    conftest_options: frozenset[str] = frozenset()


def _tapmig_help(path: list[str]) -> tuple[int, str]:
    """Exit code and text of `tapmig <path> --help`, without running anything."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parser().parse_args([*path, "--help"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            return code, out.getvalue() + err.getvalue()
    return 1, "--help did not exit"


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


def check_tapmig(words: list[str]) -> list[str]:
    args = words[1:]
    path = []
    for w in args:
        if w.startswith("-"):
            break
        path.append(w)
    shown = "tapmig " + " ".join(path)
    if not path:
        return [f"{' '.join(words)}: no tapmig subcommand"]
    code, text = _tapmig_help(path)
    if code != 0:
        return [f"{shown}: not a tapmig subcommand ({text.strip().splitlines()[-1:]})"]
    known = _options(text) | _options(_tapmig_help([])[1])
    problems = [f"{shown}: unknown option {w.split('=')[0]}" for w in args[len(path):]
                if w.startswith("--") and w.split("=")[0] not in known]
    if path == ["measure"]:
        for opt, value in itertools.pairwise(args):
            if opt == "--mode" and "$" not in value:
                try:
                    plan.parse_modes([value])
                except TapmigError as exc:
                    problems.append(f"{shown}: {exc}")
    return problems


def check_pytest(args: list[str], project: Project) -> list[str]:
    problems = []
    for opt, value in zip(args, [*args[1:], ""], strict=True):
        if not opt.startswith("-") or opt.startswith("$"):
            continue
        name = opt.split("=")[0]
        if name not in project.pytest_options:
            problems.append(f"pytest: unknown option {name}")
        elif name in project.conftest_options and "=" not in opt:
            # Before conftest.py is loaded, a separate value that names an existing
            # path becomes a test path: conftest.py is then looked for beside it.
            problems.append(f"pytest {name} {value}: write {name}={value}")
        if name == "-m":
            for marker in set(re.findall(r"[A-Za-z_]\w*", value)) - {"and", "or", "not"}:
                if marker not in project.markers:
                    problems.append(f"pytest -m {value}: marker {marker!r} is not declared")
    return problems


def check_script(script: str, project: Project) -> list[str]:
    """What in this script refers to the project but does not exist there."""
    problems = []
    try:
        cmds = commands(script)
    except ValueError as exc:
        return [f"cannot split the script into words: {exc}"]
    for words in cmds:
        prog = words[0]
        if re.fullmatch(r"(\./)?ci/[^/]+", prog):
            path = project.root / prog
            if not path.is_file():
                problems.append(f"{prog}: no such script in the project")
            elif not os.access(path, os.X_OK):
                problems.append(f"{prog}: not executable")
        elif Path(prog).name == "tapmig":
            problems += check_tapmig(words)
        elif Path(prog).name == "pytest":
            problems += check_pytest(words[1:], project)
        elif re.fullmatch(r"python3?(\.\d+)?", Path(prog).name) and words[1:3] == ["-m", "pytest"]:
            problems += check_pytest(words[3:], project)
    for module, names in re.findall(r"from (harness(?:\.\w+)*) import ([\w ,]+)", script):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            problems.append(f"from {module} import ...: no module {module}")
            continue
        problems += [f"from {module} import {n}: no such name" for n in
                     (n.strip() for n in names.split(",")) if n and not hasattr(mod, n)]
    for module in re.findall(r"-m (harness(?:\.\w+)*)", script):
        try:
            importlib.import_module(module)
        except ImportError:
            problems.append(f"python -m {module}: no such module")
    return problems


def bash_syntax(script: str) -> str | None:
    """bash -n's complaint about the script, or None."""
    res = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                         check=False)
    return res.stderr.strip() or None if res.returncode else None


# --- fixtures -----------------------------------------------------------------------------

def _pytest_help(*args: str) -> set[str]:
    res = subprocess.run([sys.executable, "-m", "pytest", *args, "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=120)
    return _options(res.stdout)


@pytest.fixture(scope="module")
def project() -> Project:
    shown = _pytest_help()
    # pytest's help drops a long option's spelling without dashes (--junitxml for
    # --junit-xml); both are accepted.
    aliases = {"--" + o[2:].replace("-", "") for o in shown if o.startswith("--")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = pyproject["tool"]["pytest"]["ini_options"]["markers"]
    return Project(ROOT, frozenset(shown | aliases),
                   frozenset(m.split(":")[0].strip() for m in markers),
                   frozenset(shown - _pytest_help("--noconftest")))


@pytest.fixture(scope="module")
def gitlab() -> dict[Any, Any]:
    return load(GITLAB.read_text(), str(GITLAB))


@pytest.fixture(scope="module")
def github() -> dict[Any, Any]:
    return load(GITHUB.read_text(), str(GITHUB))


@pytest.fixture(scope="module")
def gitlab_job(gitlab: dict[Any, Any]) -> dict[str, Any]:
    return gitlab_jobs(gitlab)["tapmig"]


@pytest.fixture(scope="module")
def github_job(github: dict[Any, Any]) -> dict[str, Any]:
    return github_jobs(github)["tapmig"]


@pytest.fixture(scope="module")
def unit_jobs(gitlab: dict[Any, Any], github: dict[Any, Any]) -> dict[str, list[list[str]]]:
    """The commands of the lint+unit job, in each CI."""
    hub = "\n".join(github_scripts(github_jobs(github)["lint-unit"]))
    return {"GitLab": commands(gitlab_script(gitlab_jobs(gitlab)["lint-unit"])),
            "GitHub": commands(hub)}


def _all_scripts(gitlab: dict[Any, Any], github: dict[Any, Any]) -> Iterator[tuple[str, str]]:
    for name, job in gitlab_jobs(gitlab).items():
        yield f"GitLab {name}", gitlab_script(job)
    for name, job in github_jobs(github).items():
        for i, script in enumerate(github_scripts(job)):
            yield f"GitHub {name} run {i}", script


def _project_commands(script: str) -> set[str]:
    """The project commands a script runs, by name: ci/x, tapmig sub, pytest -m kvm."""
    names = set()
    for words in commands(script):
        if words[0].startswith("ci/"):
            names.add(words[0])
        elif Path(words[0]).name == "tapmig":
            names.add("tapmig " + " ".join(w for w in words[1:3] if not w.startswith("-")))
        elif "pytest" in words[:3]:
            args = words[words.index("pytest") + 1:]
            names.add(" ".join(["pytest", *args[args.index("-m"):][:2]]))
    return names


# --- the real files -----------------------------------------------------------------------

def test_every_project_command_exists(gitlab: dict[Any, Any], github: dict[Any, Any],
                                      project: Project) -> None:
    problems = [f"{where}: {p}" for where, script in _all_scripts(gitlab, github)
                for p in check_script(script, project)]
    assert problems == []


def test_scripts_are_valid_bash(gitlab: dict[Any, Any], github: dict[Any, Any]) -> None:
    errors = {where: err for where, script in _all_scripts(gitlab, github)
              if (err := bash_syntax(script))}
    assert errors == {}


def test_both_jobs_run_the_same_steps(gitlab_job: dict[str, Any],
                                      github_job: dict[str, Any]) -> None:
    lab = _project_commands(gitlab_script(gitlab_job))
    hub = set().union(*(_project_commands(s) for s in github_scripts(github_job)))
    assert lab == hub
    assert {"ci/setup", "ci/build-qemu", "pytest -m kvm", "tapmig measure",
            "tapmig compare"} <= lab


def test_tests_and_measure_get_the_accelerator_and_the_outputs(gitlab_job: dict[str, Any],
                                                               github_job: dict[str, Any]) -> None:
    for script in [gitlab_script(gitlab_job), *github_scripts(github_job)]:
        for words in commands(script):
            if "pytest" in words[:3]:
                assert {"--tapmig-accel=$TAPMIG_ACCEL", "--junitxml=out/junit.xml",
                        "--tapmig-records=out/records",
                        "--tapmig-qemu=/usr/bin/qemu-system-x86_64"} <= set(words)
            if Path(words[0]).name == "tapmig" and words[1] == "measure":
                assert words[words.index("--accel") + 1] == "$TAPMIG_ACCEL"
                if "--pair" in words:  # the live update: the distribution QEMU and back
                    assert words[words.index("--pair") + 1] in (
                        "/usr/bin/qemu-system-x86_64:$qemu_built",  # GitLab's name
                        "/usr/bin/qemu-system-x86_64:$BUILT")  # GitHub's
                    assert words[words.index("--out") + 1] == "out/live-update"
                    continue
                assert words[words.index("--mode") + 1] == "new-tap,local"
                assert words[words.index("--iterations") + 1] == "$TAPMIG_ITERATIONS"
                assert words[words.index("--out") + 1] == "out/measure"


def test_gitlab_job_shape(gitlab: dict[Any, Any], gitlab_job: dict[str, Any]) -> None:
    variables = gitlab["variables"]
    assert variables["TAPMIG_RUNNER_TAG"]["value"] == "kvm"
    assert gitlab_job["tags"] == ["$TAPMIG_RUNNER_TAG"]
    assert variables["TAPMIG_ACCEL"]["value"] == "auto"
    assert variables["TAPMIG_ITERATIONS"]["value"] == "3"
    artifacts = gitlab_job["artifacts"]
    assert artifacts["reports"]["junit"] == "out/junit.xml"
    assert artifacts["when"] == "always" and "out/" in artifacts["paths"]
    # The cache keeps $TAPMIG_CACHE, which lies inside the project directory.
    cache_dir = variables["TAPMIG_CACHE"].removeprefix("$CI_PROJECT_DIR/")
    assert cache_dir != variables["TAPMIG_CACHE"]
    [build_cache] = [c for c in gitlab_job["cache"] if c["paths"] == [cache_dir + "/"]]
    assert build_cache["when"] == "always"
    # The baseline is this same job's report, on the target branch, with the job token.
    script = gitlab_script(gitlab_job)
    assert ("$CI_API_V4_URL/projects/$CI_PROJECT_ID/jobs/artifacts/"
            "${target//\\//%2F}/raw/out/measure/report.json") in script
    assert 'job=$CI_JOB_NAME' in script and "JOB-TOKEN: $CI_JOB_TOKEN" in script


def test_the_caches_inside_the_project_are_ignored_by_git(gitlab: dict[Any, Any]) -> None:
    """GitLab caches only paths inside the project, so the jobs keep their caches there:
    git must ignore them (no download reaches a commit), and tapmig then accepts its own."""
    variables = gitlab["variables"]
    inside = [Path(variables[name].removeprefix("$CI_PROJECT_DIR/"))
              for name in ("TAPMIG_CACHE", "TAPMIG_APT_CACHE", "PIP_CACHE_DIR")]
    for path in inside:
        done = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", f"{path}/"],
                              check=False, timeout=30)
        assert done.returncode == 0, f"{path} is not in .gitignore"
    assert assets.cache_dir(ROOT / inside[0]) == ROOT / inside[0]


def test_github_job_shape(github_job: dict[str, Any]) -> None:
    assert "--privileged" in github_job["container"]["options"]
    steps = github_job["steps"]
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert {"actions/checkout", "actions/cache/restore", "actions/cache/save",
            "actions/upload-artifact", "dawidd6/action-download-artifact"} <= set(uses)
    upload, baseline = uses["actions/upload-artifact"], uses["dawidd6/action-download-artifact"]
    assert upload["with"]["path"] == "out/" and "cancelled()" in upload["if"]
    assert baseline["with"]["name"] == upload["with"]["name"]
    assert baseline["with"]["if_no_artifact_found"] != "fail"
    assert baseline["continue-on-error"] is True
    # The compare step reads the report where the artifact (rooted at out/) lands.
    compare = next(s["run"] for s in steps if "tapmig compare" in s.get("run", ""))
    assert f"--baseline {baseline['with']['path']}/measure/report.json" in compare
    cache_path = uses["actions/cache/restore"]["with"]["path"]
    assert uses["actions/cache/save"]["with"]["path"] == cache_path
    assert any(f"TAPMIG_CACHE=$GITHUB_WORKSPACE/{cache_path}" in s.get("run", "") for s in steps)
    for name in VARIABLES:
        assert name in github_job["env"], name


def test_github_runs_take_no_expressions(github: dict[Any, Any]) -> None:
    """Values reach the scripts through env, never `${{ }}` pasted into shell code."""
    assert [s for job in github_jobs(github).values() for s in github_scripts(job)
            if "${{" in s] == []


def _measure_args(script: str) -> dict[str, str]:
    """The options of the script's `tapmig measure`, each with its value."""
    [words] = [w for w in commands(script) if Path(w[0]).name == "tapmig" and w[1] == "measure"]
    return dict(itertools.pairwise(words[2:]))


def test_both_run_the_sharded_campaign_alike(gitlab: dict[Any, Any],
                                             github: dict[Any, Any]) -> None:
    """The same matrix of shards in each CI, each shard running what its peer runs, then
    one job that merges what the shards left, after a failed shard too."""
    lab, hub = gitlab_jobs(gitlab), github_jobs(github)
    [lab_matrix] = lab["tapmig-shard"]["parallel"]["matrix"]
    shards = lab_matrix["TAPMIG_SHARD"]
    assert shards == [f"{i}/{len(shards)}" for i in range(1, len(shards) + 1)]
    assert hub["tapmig-shard"]["strategy"]["matrix"]["shard"] == shards
    assert hub["tapmig-shard"]["env"]["TAPMIG_SHARD"] == "${{ matrix.shard }}"
    lab_script = gitlab_script(lab["tapmig-shard"])
    hub_scripts = github_scripts(hub["tapmig-shard"])
    assert _project_commands(lab_script) == set().union(*map(_project_commands, hub_scripts))
    [hub_measure] = [s for s in hub_scripts if "tapmig measure" in s]
    for script in (lab_script, hub_measure):
        args = _measure_args(script)
        assert (args["--chain"], args["--iterations"], args["--shard"]) == (
            "$TAPMIG_CHAIN", "$TAPMIG_CHAINS", "$TAPMIG_SHARD")
        assert args["--out"] == "out/shards/shard-${TAPMIG_SHARD%/*}-of-${TAPMIG_SHARD#*/}"
    merges = [gitlab_script(lab["tapmig-shards-report"]),
              *github_scripts(hub["tapmig-shards-report"])]
    assert sum("tapmig report out/shards/shard-* --out out/shards-report" in s
               for s in merges) == 2
    assert lab["tapmig-shards-report"]["needs"] == [{"job": "tapmig-shard", "artifacts": True}]
    assert [r.get("when") for r in lab["tapmig-shards-report"]["rules"]] == ["always"]
    assert hub["tapmig-shards-report"]["needs"] == "tapmig-shard"
    assert "!cancelled()" in hub["tapmig-shards-report"]["if"]
    assert hub["tapmig-shard"]["strategy"]["fail-fast"] is False
    uploads = [s["with"] for s in hub["tapmig-shard"]["steps"]
               if s.get("uses", "").startswith("actions/upload-artifact@")]
    [download] = [s["with"] for s in hub["tapmig-shards-report"]["steps"]
                  if s.get("uses", "").startswith("actions/download-artifact@")]
    assert [u["path"] for u in uploads] == [download["path"] + "/"]
    assert uploads[0]["name"].startswith(download["pattern"].removesuffix("*"))
    assert download["merge-multiple"] is True


def test_github_cache_key_is_the_build_key(github_job: dict[str, Any], tmp_path: Path) -> None:
    """The key snippet runs, and gives ci/build-qemu's own key, so the cache follows the inputs."""
    code = next(words[words.index("-c") + 1] for script in github_scripts(github_job)
                for words in commands(script) if "-c" in words and "cache_key" in " ".join(words))
    src = tmp_path / "qemu"
    src.mkdir()
    (src / "configure").write_text("#!/bin/sh\n")
    patch = tmp_path / "one.patch"
    patch.write_text("diff --git a/x b/x\n")

    def key(*patches: Path) -> str:
        res = subprocess.run([sys.executable, "-c", code, str(src), *map(str, patches)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, check=True, timeout=60)
        return res.stdout.strip()

    assert key(patch) == build.cache_key(source.inspect_source(src), [patch],
                                         build.CONFIGURE_FLAGS)[0]
    assert key() != key(patch)


def test_marker_selects_guest_tests(project: Project) -> None:
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", "kvm", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                         check=False, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert re.search(r"^\d+(/\d+)? tests? (collected|selected)", res.stdout, re.M), res.stdout


def test_readme_documents_every_variable(gitlab: dict[Any, Any]) -> None:
    text = README.read_text()
    missing = [v for v in [*VARIABLES, *gitlab["variables"]] if f"`{v}`" not in text]
    assert missing == []


# --- the checker catches what it should ---------------------------------------------------

def test_broken_yaml_is_reported() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load("job:\n  script: [ci/setup\n", "broken.yml")
    with pytest.raises(ConfigError, match="not a mapping"):
        load("- just a list\n", "list.yml")


def test_malformed_jobs_are_reported() -> None:
    with pytest.raises(ConfigError, match="has no script"):
        gitlab_jobs(load("variables: {A: b}\njob:\n  image: debian:12\n", "x"))
    with pytest.raises(ConfigError, match="no job"):
        gitlab_jobs(load("variables: {A: b}\n", "x"))
    with pytest.raises(ConfigError, match="has no steps"):
        github_jobs(load("on: push\njobs:\n  j:\n    runs-on: ubuntu-latest\n", "x"))
    with pytest.raises(ConfigError, match="exactly one of uses/run"):
        github_jobs(load("on: push\njobs:\n  j:\n    steps:\n      - name: nothing\n", "x"))
    with pytest.raises(ConfigError, match="no `on`"):
        github_jobs(load("jobs: {}\n", "x"))


@pytest.mark.parametrize(("script", "problem"), [
    ("ci/no-such-script --x", "ci/no-such-script: no such script"),
    ("out=$(ci/nope | tail -n 1)", "ci/nope: no such script"),
    (".venv/bin/tapmig no-such-sub --x", "tapmig no-such-sub: not a tapmig subcommand"),
    ("tapmig measure --qemu q --no-such-flag 1", "tapmig measure: unknown option --no-such-flag"),
    ("tapmig measure --qemu q --mode new-tap,warp --iterations 3 --out o", "unknown mode 'warp'"),
    ("tapmig guest nope", "tapmig guest nope: not a tapmig subcommand"),
    (".venv/bin/python -m pytest --no-such-option", "pytest: unknown option --no-such-option"),
    ("a=(--tapmig-recrods r)\npytest \"${a[@]}\"", "pytest: unknown option --tapmig-recrods"),
    ("python3 -m pytest -m 'kvm and gpu'", "marker 'gpu' is not declared"),
    ("python3 -c 'from harness.qemu.build import cache_key, no_such_name'",
     "no_such_name: no such"),
    ("python3 -m harness.no_such_module", "harness.no_such_module: no such module"),
    ("echo 'unbalanced", "cannot split"),
])
def test_checker_reports(script: str, problem: str, project: Project) -> None:
    problems = check_script(script, project)
    assert any(problem in p for p in problems), problems


def test_checker_reports_a_script_that_is_not_executable(project: Project,
                                                         tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "plain").write_text("#!/bin/sh\n")
    other = Project(tmp_path, project.pytest_options, project.markers)
    assert check_script("if true; then ci/plain; fi", other) == ["ci/plain: not executable"]


def test_checker_reports_a_conftest_option_with_a_separate_value(project: Project) -> None:
    """An option only a conftest.py adds needs `=`: before that conftest is loaded, pytest
    takes a separate value for a test path. (The plugin's --tapmig-* options are loaded
    first, so they take either form; this suite's short --qemu is its conftest's.)"""
    other = Project(project.root, project.pytest_options | {"--late"}, project.markers,
                    frozenset({"--late"}))
    assert check_script('a=(--late /usr/bin/q)\npytest "${a[@]}"', other) == [
        "pytest --late /usr/bin/q: write --late=/usr/bin/q"]
    assert check_script("pytest --tapmig-qemu /usr/bin/q", project) == []
    assert check_script("pytest --qemu /usr/bin/q", project) == [
        "pytest --qemu /usr/bin/q: write --qemu=/usr/bin/q"]


def test_checker_accepts_what_exists(project: Project) -> None:
    script = """
        set -eo pipefail
        qemus=(--tapmig-qemu=/usr/bin/qemu-system-x86_64)
        built=$(ci/build-qemu --source "$SRC" | tail -n 1)
        # a comment naming ci/nothing is not a command
        .venv/bin/python -m pytest -m kvm --tapmig-accel=auto --junitxml=out/j.xml "${qemus[@]}" \\
            --tapmig-records=out/records -x || rc=$?
        .venv/bin/tapmig measure --qemu "$built" --mode new-tap,local --iterations 3 --out o
        .venv/bin/tapmig guest build > /dev/null
    """
    assert check_script(script, project) == []


def test_syntax_errors_are_reported() -> None:
    assert bash_syntax("if true; then echo\n") is not None
    assert bash_syntax("if true; then echo; fi\n") is None


# --- the lint+unit job, downloads, baselines ---------------------------------------------

CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
needs_checker = pytest.mark.skipif(not CHECK_JSONSCHEMA.exists(), reason=(
    f"{CHECK_JSONSCHEMA} is not installed (pip install -e '.[test]', as ci/setup does)"))


def validate(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the CI vendor's own schema, which it ships (no network)."""
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


@needs_checker
@pytest.mark.parametrize(("schema", "path"), [("vendor.github-workflows", GITHUB),
                                              ("vendor.gitlab-ci", GITLAB)],
                         ids=["github", "gitlab"])
def test_job_files_match_their_vendors_schema(schema: str, path: Path, tmp_path: Path) -> None:
    done = validate(schema, path)
    assert done.returncode == 0, done.stdout + done.stderr
    # The schema is really applied: a job with a misspelt key fails it.
    broken = tmp_path / path.name
    text = path.read_text()
    misspelt = text.replace("timeout-minutes:", "timeout-minuets:", 1) \
        if "timeout-minutes:" in text else text.replace("  timeout: 1h", "  timeout_: 1h", 1)
    assert misspelt != text
    broken.write_text(misspelt)
    assert validate(schema, broken).returncode != 0


def test_lint_unit_job_runs_lint_and_the_tests_without_guests(
        unit_jobs: dict[str, list[list[str]]]) -> None:
    for ci, cmds in unit_jobs.items():
        lines = [" ".join(words) for words in cmds]
        assert "ci/setup --chromium" in lines, ci
        assert ".venv/bin/ruff check ." in lines and ".venv/bin/mypy" in lines, ci
        [pytest_cmd] = [words[words.index("pytest") + 1:] for words in cmds if "pytest" in words]
        assert pytest_cmd[pytest_cmd.index("-m") + 1] == "not kvm", ci
        junit = next(w for w in pytest_cmd if w.startswith("--junitxml="))
        assert junit == "--junitxml=out/junit-unit.xml", ci


def test_lint_unit_job_needs_no_kvm_runner(gitlab: dict[Any, Any],
                                           github: dict[Any, Any]) -> None:
    assert "tags" not in gitlab_jobs(gitlab)["lint-unit"]
    assert gitlab_jobs(gitlab)["tapmig"]["tags"] == ["$TAPMIG_RUNNER_TAG"]
    assert github_jobs(github)["lint-unit"]["runs-on"] == "ubuntu-latest"


def test_chromium_only_where_the_browser_test_runs(gitlab: dict[Any, Any],
                                                   github: dict[Any, Any]) -> None:
    """The KVM job installs no Chromium; the job that does selects the browser test."""
    setup = (ROOT / "ci" / "setup").read_text()
    assert "chromium" not in setup.split("packages=(", 1)[1].split(")", 1)[0]
    kvm_scripts = [gitlab_script(gitlab_jobs(gitlab)["tapmig"]),
                   *github_scripts(github_jobs(github)["tapmig"])]
    assert all("--chromium" not in script for script in kvm_scripts)
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", "not kvm", "--collect-only",
                          "-q", "-p", "no:cacheprovider", "tests/test_report_browser.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert re.search(r"^\d+ tests? collected", res.stdout, re.M), res.stdout[-2000:]


def test_apt_and_pip_downloads_are_cached(gitlab: dict[Any, Any],
                                          github: dict[Any, Any]) -> None:
    variables = gitlab["variables"]
    for name in ("TAPMIG_APT_CACHE", "PIP_CACHE_DIR"):
        assert variables[name].startswith("$CI_PROJECT_DIR/.cache/"), name
    for name in ("lint-unit", "tapmig"):
        caches = gitlab_jobs(gitlab)[name]["cache"]
        assert any(c["paths"] == [".cache/"] for c in caches), name
        steps = github_jobs(github)[name]["steps"]
        [cache] = [s for s in steps if s.get("uses", "").startswith("actions/cache@")]
        assert cache["with"]["path"] == ".cache"
        env = "\n".join(s.get("run", "") for s in steps)
        assert "TAPMIG_APT_CACHE=$GITHUB_WORKSPACE/.cache/apt" in env, name
        assert "PIP_CACHE_DIR=$GITHUB_WORKSPACE/.cache/pip" in env, name
    assert "TAPMIG_APT_CACHE" in (ROOT / "ci" / "setup").read_text()


def test_default_branch_compares_with_the_previous_push(gitlab_job: dict[str, Any],
                                                        github_job: dict[str, Any]) -> None:
    script = gitlab_script(gitlab_job)
    assert 'elif [ "${CI_COMMIT_BRANCH:-}" = "$CI_DEFAULT_BRANCH" ]; then' in script
    assert "target=$CI_DEFAULT_BRANCH" in script
    steps = {s.get("id"): s for s in github_job["steps"]}
    baseline = steps["baseline"]
    assert baseline["with"]["branch"] == "${{ github.base_ref || github.ref_name }}"
    assert "github.ref_name == github.event.repository.default_branch" in baseline["if"]
    # Only successful runs are baselines, and a regression fails the run.
    assert baseline["with"]["workflow_conclusion"] == "success"
    compare = next(s for s in github_job["steps"] if "tapmig compare" in s.get("run", ""))
    assert "steps.baseline.outcome != 'skipped'" in compare["if"]
    assert "exit 1 ;;" in compare["run"]


def test_github_publishes_the_junit_results(github: dict[Any, Any]) -> None:
    for name, job in github_jobs(github).items():
        written = {w.split("=", 1)[1] for script in github_scripts(job)
                   for words in commands(script) for w in words if w.startswith("--junitxml=")}
        published = {s["with"]["report_paths"] for s in job["steps"]
                     if s.get("uses", "").startswith("mikepenz/action-junit-report@")}
        assert written == published, name
        assert bool(written) == (name in ("lint-unit", "tapmig")), name
    assert github["permissions"]["checks"] == "write"


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_the_series_is_found_beside_the_clone_or_beside_its_origin(tmp_path: Path) -> None:
    """ci/series: a scratch clone of a working copy (`git clone . /tmp/fresh`) tests the
    series beside the working copy; where neither has it, exit 1 naming the clone's."""
    origin = tmp_path / "work" / "repo"
    (origin / "ci").mkdir(parents=True)
    (origin / "ci" / "series").write_bytes((ROOT / "ci" / "series").read_bytes())
    (origin / "ci" / "series").chmod(0o755)
    git("init", "-q", cwd=origin)
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".", cwd=origin)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=origin)
    clone = tmp_path / "scratch" / "fresh"
    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)

    def series(repo: Path) -> tuple[int, str]:
        done = subprocess.run([str(repo / "ci" / "series")], capture_output=True, text=True,
                              timeout=60, check=False)
        return done.returncode, done.stdout.strip()

    assert series(clone) == (1, str(tmp_path / "scratch" / "shared" / "qemu"))
    (tmp_path / "work" / "shared" / "qemu").mkdir(parents=True)
    assert series(clone) == (0, str(tmp_path / "work" / "shared" / "qemu"))
    (tmp_path / "scratch" / "shared" / "qemu").mkdir(parents=True)
    assert series(clone) == (0, str(tmp_path / "scratch" / "shared" / "qemu"))
    assert series(origin) == (0, str(tmp_path / "work" / "shared" / "qemu"))
