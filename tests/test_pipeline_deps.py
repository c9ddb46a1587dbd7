"""What a stage runs is what dvc.yaml says it depends on, and what a checkpoint may be resumed by is
the whole training package: an edit anywhere reruns exactly the stages that run it."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import yaml

from anime_dcgan.training import checkpoint as ckpt

PROJECT = Path(__file__).resolve().parents[1]
SRC = PROJECT / "src"
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    """The file a dotted anime_dcgan module name runs: a package's __init__.py or a module's .py."""
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imported_names(path: Path) -> set[str]:
    """Every anime_dcgan module name `path` imports, including `from pkg import module` forms."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "anime_dcgan"}


def reached_files(script: Path) -> set[Path]:
    """The project files running `script` executes: its imports, transitively, and the __init__.py
    of every package on the way (Python runs them before the module)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in _imported_names(todo.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                file = _module_file(".".join(parts[:depth]))
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen


def _covered(file: Path, deps: list[str]) -> bool:
    relative = file.relative_to(PROJECT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_among_its_dvc_deps(stage):
    definition = STAGES[stage]
    script = PROJECT / next(word for word in definition["cmd"].split() if word.endswith(".py"))
    reached = reached_files(script)
    assert len(reached) >= 5, reached  # the walk found the library (params, paths, errors, a family...)
    uncovered = sorted(str(f.relative_to(PROJECT)) for f in reached | {script} if not _covered(f, definition["deps"]))
    assert not uncovered, f"{stage} runs {uncovered} but dvc.yaml does not list them in its deps"


def test_the_walk_follows_from_imports_of_modules_and_package_init_files():
    reached = reached_files(PROJECT / "stages/train.py")
    for relative in ("training/__init__.py", "training/loop.py", "training/cpu_ops.py", "util/__init__.py",
                     "util/visuals.py", "__init__.py", "errors.py"):
        assert SRC / "anime_dcgan" / relative in reached, relative


def test_dvc_deps_name_existing_paths():
    for stage, definition in STAGES.items():
        for dep in definition["deps"]:
            if dep.startswith(("src/", "stages/")):
                assert (PROJECT / dep).exists(), f"{stage}: {dep} does not exist"


TRAINING_MODULES = sorted(p.relative_to(ckpt.TRAINING_PACKAGE).as_posix()
                          for p in ckpt.TRAINING_PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", TRAINING_MODULES)
def test_an_edit_to_any_training_module_changes_the_run_identity(tmp_path, module):
    package = tmp_path / "training"
    shutil.copytree(ckpt.TRAINING_PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    config = {"steps": 10, "lr": 0.001}
    before = ckpt.run_identity(config, "data-digest", package)
    assert ckpt.run_identity(config, "data-digest", package) == before
    with open(package / module, "a") as handle:
        handle.write("\n# an edit\n")
    assert ckpt.run_identity(config, "data-digest", package) != before


def test_the_identity_covers_the_cpu_kernels_and_ignores_caches(tmp_path):
    assert "cpu_ops.py" in TRAINING_MODULES and "step.py" in TRAINING_MODULES
    package = tmp_path / "training"
    shutil.copytree(ckpt.TRAINING_PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = ckpt.run_identity({}, "d", package)
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "loop.cpython-311.pyc").write_bytes(b"compiled")
    assert ckpt.run_identity({}, "d", package) == before


ALL_STAGES = set(STAGES)
# an edit to this file -> the stages `dvc status` must name, and only those
EDITS = {
    "src/anime_dcgan/data/readers/archive.py": {"download", "preprocess"},
    "src/anime_dcgan/training/cpu_ops.py": {"train", "generate"},
    "src/anime_dcgan/training/sample.py": {"train", "generate", "evaluate"},  # the served model's code
    "src/anime_dcgan/serving.py": {"train", "generate", "evaluate"},
    "src/anime_dcgan/evaluation/swd.py": {"fid_reference", "attribute_classifier", "train", "evaluate"},
    "src/anime_dcgan/tracking.py": {"train", "generate", "evaluate"},
    "src/anime_dcgan/util/visuals.py": ALL_STAGES,
    "stages/generate.py": {"generate"},
}


def _changed_stages(repo) -> set[str]:
    status = json.loads(repo.dvc("status", "--json").stdout or "{}")
    return {name.split(":")[-1] for name in status}


@pytest.mark.e2e
def test_dvc_status_names_exactly_the_stages_whose_code_changed(reproduced_repo):
    repo = reproduced_repo
    assert _changed_stages(repo) == set()
    for relative, expected in EDITS.items():
        path = repo.root / relative
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        assert _changed_stages(repo) == expected, relative
        path.write_text(original)
        assert _changed_stages(repo) == set(), relative
