"""The cluster's conda environments (envs/*.yaml) are consistent with what is tested here: conda cannot
be installed on these machines, so the envs are checked against the pip pins the tests run with
(requirements.txt; requirements-vllm.txt for generate.yaml), against the rules that name them, and
against the imports of the stage modules each rule runs."""
import ast
import inspect
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workflow_scripts import plan  # noqa: E402
from workflow_scripts.plan import base as plan_base  # noqa: E402

ENVS = {p.stem: p for p in sorted((ROOT / "envs").glob("*.yaml"))}
RULE_FILES = sorted((ROOT / "rules").glob("*.smk"))
# The pip pins each env must agree with: the environment the test suite itself runs in.
REFERENCE = {name: [ROOT / "requirements-vllm.txt"] if name == "generate"
             else [ROOT / "requirements.txt", ROOT / "requirements-deepspeed.txt"] for name in ENVS}
# import name -> distribution name, where they differ beyond PEP 503 normalisation
DISTRIBUTION = {"yaml": "pyyaml"}
# installed as dependencies of a pinned package (not pinned themselves)
PROVIDED_BY = {"huggingface_hub": {"transformers", "datasets"}, "numpy": {"torch", "pandas", "datasets"}}
# vllm is imported lazily by workflow_scripts/backends.py for `backend: vllm` only, and the generating
# rules run such stages with generate.yaml's interpreter (workflow_scripts/plan/base.py: python); vllm pins
# transformers < 5.20, so no other env can have it
ONLY_IN = {"vllm": "generate"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(line: str) -> tuple[str, str]:
    """('torch', '==2.13.0') from 'torch==2.13.0'; a local version label (+cpu) is the same release."""
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(.*?)\s*$", line)
    return canonical(m[1]), re.sub(r"\+\w+$", "", m[2].replace(" ", ""))


def env_pins(name: str) -> dict[str, str]:
    spec = yaml.safe_load(ENVS[name].read_text())
    pip = [d for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, f"{name}.yaml: one pip section expected"
    return dict(parse_pin(line) for line in pip[0]["pip"])


def requirement_pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(parse_pin(line) for line in lines if line)


def rules() -> dict[str, str]:
    """Rule name -> its block of text, for every rule of the Snakefile and rules/*.smk."""
    blocks = {}
    for path in [ROOT / "Snakefile", *RULE_FILES]:
        text = path.read_text()
        for m in re.finditer(r"^rule (\w+):\n((?:(?:[ \t]+.*)?\n)*)", text, re.M):
            blocks[m[1]] = m[2]
    return blocks


def test_one_env_per_stage_family():
    assert set(ENVS) == {"data", "generate", "train", "eval", "report"}
    for name, path in ENVS.items():
        spec = yaml.safe_load(path.read_text())
        assert "conda-forge" in spec["channels"], name
        assert any(re.fullmatch(r"python=3\.\d+", str(d)) for d in spec["dependencies"]), f"{name}: python not pinned"
        for package, version in env_pins(name).items():
            assert version, f"envs/{name}.yaml: {package} has no version"


@pytest.mark.parametrize("name", list(ENVS))
def test_env_pins_match_the_tested_requirements(name):
    reference = {pkg: ver for path in REFERENCE[name] for pkg, ver in requirement_pins(path).items()}
    differing = {pkg: (ver, reference[pkg]) for pkg, ver in env_pins(name).items()
                 if pkg in reference and reference[pkg] != ver}
    assert not differing, f"envs/{name}.yaml vs {[p.name for p in REFERENCE[name]]}: {differing}"


def test_envs_agree_with_each_other():
    """A package pinned in several envs has one version everywhere, except where vllm forces another
    (generate.yaml's transformers)."""
    versions = {}
    for name in ENVS:
        for pkg, ver in env_pins(name).items():
            versions.setdefault(pkg, {})[name] = ver
    for pkg, by_env in versions.items():
        others = {env: v for env, v in by_env.items() if env != "generate"}
        assert len(set(others.values())) <= 1, (pkg, by_env)


def test_stage_families_have_their_tools():
    train, evaluation, generate = env_pins("train"), env_pins("eval"), env_pins("generate")
    assert {"torch", "deepspeed", "accelerate", "transformers", "peft", "bitsandbytes"} <= set(train)
    assert {"lm-eval", "alpaca-eval", "torch", "transformers"} <= set(evaluation)
    assert {"vllm", "torch", "transformers"} <= set(generate)
    assert {"pandas", "matplotlib"} <= set(env_pins("report"))
    assert {"datasets", "pyarrow"} <= set(env_pins("data"))


def plan_sources(value: str) -> str:
    """The source of the plan's methods a conda: directive names (`P.<section>.<method>`), with the plan's
    helpers they call (workflow_scripts/plan/base.py: engine_env picks generate.yaml for the vllm backend)."""
    sections = dict(re.findall(r"self\.(\w+) = (\w+)\(config, basedir\)", inspect.getsource(plan.Plan)))
    found = "".join(inspect.getsource(getattr(getattr(plan, sections[section]), method))
                    for section, method in re.findall(r"\bP\.(\w+)\.(\w+)", value))
    called = (getattr(plan_base, name, None) for name in re.findall(r"(\w+)\(", found))
    return found + "".join(inspect.getsource(f) for f in called if inspect.isfunction(f))


def rule_envs(block: str) -> set[str] | None:
    """The envs a rule's conda: directive may name: its literal paths, and those of the plan's method it
    calls. None without a directive."""
    m = re.search(r"^([ \t]+)conda:[ \t]*\n((?:\1[ \t]+.*\n?)+)", block, re.M)
    if not m:
        return None
    value = m[2] + plan_sources(m[2])
    return set(re.findall(r"\"([^\"]*envs/[^\"]+)\"", value))


def test_every_rule_names_an_existing_env():
    blocks = rules()
    assert {"train", "generate", "evaluate", "table", "manifest", "data", "merge"} <= set(blocks)
    for rule, block in blocks.items():
        if rule == "all":  # the default target: no command, nothing to deploy
            assert not re.search(r"^\s+(shell|run|script):", block, re.M)
            continue
        envs = rule_envs(block)
        assert envs, f"rule {rule} has no conda: directive naming an env of envs/"
        for path in envs:
            env = (ROOT / "rules" / path).resolve()
            assert env.parent == ROOT / "envs" and env.stem in ENVS, f"rule {rule}: {path} is not one of envs/"


def stage_modules(block: str) -> set[str]:
    """The workflow_scripts modules a rule runs (`python -m workflow_scripts.X`, the launcher's target)."""
    shell = re.search(r"^\s+shell:\s*\n((?:\s+\".*\n?)+)", block, re.M)
    return set(re.findall(r"workflow_scripts\.(\w+)", shell[1] if shell else ""))


def imports(tree: ast.AST, lazy: bool):
    """Import statements of a module: all of them, or (lazy=False) those run when it is imported."""
    if lazy:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from imports(node, lazy=False)


def third_party_imports(module: str, seen=None, lazy: bool = True) -> set[str]:
    """Top-level names of the packages a stage module imports (lazy imports too), following the
    workflow_scripts modules it uses (their module-level imports: a helper's lazy import serves the
    stages that call that code path, e.g. data.py's `datasets` for hub data)."""
    seen = set() if seen is None else seen
    if module in seen:
        return set()
    seen.add(module)
    tree = ast.parse((ROOT / "workflow_scripts" / f"{module}.py").read_text())
    found = set()
    for node in imports(tree, lazy):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] != "workflow_scripts":
                    found.add(parts[0])
                elif len(parts) > 1:
                    found |= third_party_imports(parts[1], seen, lazy=False)
        elif node.level == 0 and node.module.split(".")[0] != "workflow_scripts":
            found.add(node.module.split(".")[0])
        else:
            inner = (node.module or "").removeprefix("workflow_scripts").lstrip(".")
            for sub in ([inner.split(".")[0]] if inner else [a.name for a in node.names]):
                if (ROOT / "workflow_scripts" / f"{sub}.py").is_file():
                    found |= third_party_imports(sub, seen, lazy=False)
    return {name for name in found if name not in sys.stdlib_module_names and name != "__future__"}


def test_each_rule_env_provides_what_its_stages_import():
    """Every env a rule may run in has the packages its stage modules import (their own imports, lazy
    ones included, and the module-level imports of the workflow_scripts modules they use)."""
    missing = {}
    for rule, block in rules().items():
        for path in rule_envs(block) or ():
            env = Path(path).stem
            pins = set(env_pins(env))
            for module in stage_modules(block):
                for name in third_party_imports(module):
                    dist = canonical(DISTRIBUTION.get(name, name))
                    if dist in pins or PROVIDED_BY.get(name, set()) & pins:
                        continue
                    if name in ONLY_IN and ONLY_IN[name] != env:
                        continue
                    missing.setdefault(f"{rule} ({env}.yaml)", set()).add(f"{module}: {name}")
    assert not missing, missing
