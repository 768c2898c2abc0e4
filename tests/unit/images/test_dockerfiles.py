"""The container images' Dockerfiles, read as a reviewer would: pinned bases, non-root users, multi-stage builds
without build tools in the final image, OCI labels, build contexts holding what they copy, Python pins equal to
pyproject.toml's, requirements that cover what each image's programs import, and entry points that exist.

No container engine is needed: the Dockerfiles are parsed, and the programs they start run from the virtualenv
with the imports an image lacks blocked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kubeforge import __version__
from kubeforge.operators import settings
from kubeforge.operators.run import HANDLERS
from tests.conftest import REPO

from .dockerfile import Dockerfile, parse


@dataclass(frozen=True)
class Image:
    dockerfile: str
    name: str
    tag: str
    requirements: tuple[str, ...] = ()
    """Requirement files whose packages the image installs (besides torch, installed at TORCH_VERSION)."""
    torch: bool = False
    entry_modules: tuple[str, ...] = ()
    """Modules whose imports, followed through kubeforge, the image's packages must provide."""
    may_lack: tuple[str, ...] = ()
    """Imports left out on purpose (see the Dockerfile for how to add them)."""
    commands: tuple[tuple[str, ...], ...] = ()
    """kubeforge command lines the pods run from this image."""
    kubeforge: bool = True
    """Whether the image runs kubeforge (the MLflow server's does not)."""


IMAGES = [
    Image(
        "operators/Dockerfile",
        "ghcr.io/kubeforge/kubeforge-operator",
        __version__,
        ("operators/requirements.txt",),
        entry_modules=(
            "kubeforge.operators.run",
            "kubeforge.operators.runtime",
            *HANDLERS.values(),
            "kubeforge.featurestore.commands",
        ),
        commands=(("operator", "run"), ("features", "materialize-job")),
    ),
    Image(
        "serving/Dockerfile",
        "ghcr.io/kubeforge/kubeforge-gateway",
        __version__,
        ("serving/requirements.txt",),
        entry_modules=("kubeforge.serving.commands", "kubeforge.serving.gateway", "kubeforge.serving.export"),
        # The export reads MLflow over REST; the mlflow package only for servers that do not serve artifacts.
        may_lack=("mlflow",),
        commands=(("serving", "gateway"), ("serving", "export")),
    ),
    Image(
        "training/Dockerfile",
        "ghcr.io/kubeforge/kubeforge-trainer",
        __version__,
        ("training/requirements.txt",),
        torch=True,
        entry_modules=("kubeforge.training.main",),
        commands=(("train",),),
    ),
    Image(
        "training/Dockerfile.cuda",
        "ghcr.io/kubeforge/kubeforge-trainer",
        f"{__version__}-cuda",
        ("training/requirements.txt",),
        torch=True,
        entry_modules=("kubeforge.training.main",),
        commands=(("train",),),
    ),
    Image("serving/triton/Dockerfile", "ghcr.io/kubeforge/kubeforge-triton", __version__),
    Image(
        "serving/mlflow/Dockerfile",
        "ghcr.io/kubeforge/kubeforge-mlflow",
        __version__,
        ("serving/mlflow/requirements.txt",),
        kubeforge=False,
    ),
]
PYTHON_IMAGES = [i for i in IMAGES if i.requirements]
KUBEFORGE_IMAGES = [i for i in PYTHON_IMAGES if i.kubeforge]
ids = [i.dockerfile for i in IMAGES]
# Distributions published under another name than pyproject.toml's pin: the same release.
SAME_RELEASE = {"mlflow-skinny": "mlflow"}
# What the MLflow server's image adds to mlflow: its PostgreSQL driver and S3 client, pinned there.
NOT_IN_PYPROJECT = {"psycopg2-binary", "boto3"}


def dockerfile(image: Image) -> Dockerfile:
    return parse(REPO / image.dockerfile)


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"pyproject.toml pins exactly: {line}"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def requirements(path: str) -> list[Requirement]:
    lines = (REPO / path).read_text().splitlines()
    return [Requirement(line) for line in (x.split("#")[0].strip() for x in lines) if line]


def test_every_dockerfile_in_the_repository_is_tested() -> None:
    found = {
        str(p.relative_to(REPO)) for d in ("operators", "serving", "training") for p in (REPO / d).rglob("Dockerfile*")
    }
    assert found == {i.dockerfile for i in IMAGES}


@pytest.mark.parametrize("image", IMAGES, ids=ids)
def test_base_images_are_pinned(image: Image) -> None:
    df = dockerfile(image)
    earlier: set[str] = set()
    for stage in df.stages:
        base = stage.base
        assert "$" not in base, f"{base}: an ARG without a default"
        if base in earlier:
            continue
        ref, _, digest = base.partition("@")
        _repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        assert tag != "latest" and (digest.startswith("sha256:") or tag), f"{base}: neither a digest nor a tag"
        if not digest:
            # An exact release: a full version (3.11.13, 12.8.1) or NVIDIA's monthly release tag (26.08-py3).
            assert re.match(r"^(\d+\.\d+\.\d+|\d{2}\.\d{2}-py3$)", tag), f"{base}: not an exact release tag"
        if stage.name:
            earlier.add(stage.name)


@pytest.mark.parametrize("image", IMAGES, ids=ids)
def test_the_final_image_runs_as_a_numeric_non_root_user(image: Image) -> None:
    user = dockerfile(image).final.last("USER")
    assert user is not None, "no USER in the final stage: the image would run as root"
    assert re.fullmatch(r"\d+(:\d+)?", user.value), f"USER {user.value}: numeric, so runAsNonRoot can check it"
    assert int(user.value.split(":")[0]) != 0


@pytest.mark.parametrize("image", PYTHON_IMAGES, ids=[i.dockerfile for i in PYTHON_IMAGES])
def test_packages_are_installed_in_a_build_stage_and_copied(image: Image) -> None:
    df = dockerfile(image)
    assert len(df.stages) >= 2, "multi-stage: installers and caches stay in the build stage"
    final = df.final
    assert not final.all("RUN"), "the final stage only copies the built environment"
    copies = [c.value for c in final.all("COPY")]
    assert any(c.startswith("--from=build ") for c in copies), copies
    for stage in df.stages[:-1]:
        for run in stage.all("RUN"):
            assert "apt-get install" not in run.value or "rm -rf /var/lib/apt/lists" in run.value


@pytest.mark.parametrize("image", IMAGES, ids=ids)
def test_no_build_tools_in_the_final_image(image: Image) -> None:
    for run in dockerfile(image).final.all("RUN"):
        for tool in ("build-essential", "gcc", "g++", "make ", "git ", "-dev "):
            assert tool not in run.value, f"{tool.strip()} installed into the final image"
        if "pip install" in run.value:
            assert "--no-cache-dir" in run.value, "pip's cache would stay in the image"


@pytest.mark.parametrize("image", IMAGES, ids=ids)
def test_oci_labels(image: Image) -> None:
    final = dockerfile(image).final
    labels = final.labels()
    for key in ("title", "description", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.title"] == image.name.rsplit("/", 1)[1]
    assert final.args()["VERSION"] == __version__
    version = labels["org.opencontainers.image.version"].replace("${VERSION}", __version__)
    assert version == image.tag
    assert (
        labels["org.opencontainers.image.licenses"]
        == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    )


def _build_script(**env: str) -> subprocess.CompletedProcess[str]:
    path = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run(
        ["bash", str(REPO / "platform" / "images" / "build.sh")], env={**path, **env}, capture_output=True, text=True
    )


def test_make_images_builds_every_image_with_its_tag_and_pushes_them_all() -> None:
    done = _build_script(DRY_RUN="1", PUSH="1", REGISTRY="registry.example/ml", REVISION="abc123")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    builds = [line for line in lines if line.startswith("docker build ")]
    expected = {(i.dockerfile, f"{i.name.replace('ghcr.io/kubeforge', 'registry.example/ml')}:{i.tag}") for i in IMAGES}
    assert {(line.split(" -f ")[1].split()[0], line.split(" -t ")[1].split()[0]) for line in builds} == expected
    assert all(f"--build-arg VERSION={__version__} --build-arg REVISION=abc123" in line for line in builds)
    assert all(line.endswith(" .") for line in builds), "the build context is the repository root"
    pushed = sorted(line.split()[-1] for line in lines if line.startswith("docker push "))
    assert pushed == sorted(tag for _, tag in expected)
    # By default the tags are the ones the operators and the chart run.
    defaults = _build_script(DRY_RUN="1").stdout
    for image in (settings.OPERATOR_IMAGE, settings.GATEWAY_IMAGE, settings.TRAINER_IMAGE, settings.TRITON_IMAGE):
        assert f" -t {image} " in defaults
    assert "docker push" not in defaults


def test_make_images_without_an_engine_says_what_to_install() -> None:
    done = _build_script(DOCKER="no-such-engine")
    assert done.returncode == 1 and "no-such-engine not found: install Docker 23 or later" in done.stderr
    assert done.stdout == ""


def test_the_operators_default_images_are_these_images() -> None:
    expected = {
        "operator": settings.OPERATOR_IMAGE,
        "gateway": settings.GATEWAY_IMAGE,
        "trainer": settings.TRAINER_IMAGE,
        "triton": settings.TRITON_IMAGE,
    }
    assert expected == {k: f"ghcr.io/kubeforge/kubeforge-{k}:{__version__}" for k in expected}
    built = {f"{i.name}:{i.tag}" for i in IMAGES if i.kubeforge}
    for default in (settings.OPERATOR_IMAGE, settings.GATEWAY_IMAGE, settings.TRAINER_IMAGE, settings.TRITON_IMAGE):
        assert default in built


def test_settings_default_to_these_images(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TRAINER", "TRITON", "GATEWAY", "MATERIALIZER"):
        monkeypatch.delenv(f"KUBEFORGE_{var}_IMAGE", raising=False)
    s = settings.Settings.from_env()
    assert s.trainer_image == settings.TRAINER_IMAGE
    assert s.triton_image == settings.TRITON_IMAGE
    assert s.gateway_image == settings.GATEWAY_IMAGE
    assert s.materializer_image == settings.OPERATOR_IMAGE
    assert settings.Settings("u", "t", "t", "g", "p").materializer_image == settings.OPERATOR_IMAGE


# -- build context --------------------------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go's filepath.Match, plus ** for any number of directories)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def in_context(path: str) -> bool:
    """Whether `docker build .` sends path, by .dockerignore's rules: the last pattern matching the path or one
    of its parent directories decides."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern(line.lstrip("!").strip("/"))))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            included = negate
    return included


def test_dockerignore_keeps_the_context_small() -> None:
    for kept in ("pyproject.toml", "README.md", "src/kubeforge/cli.py", "src/kubeforge/serving/python_model.py.tmpl"):
        assert in_context(kept), kept
    for left_out in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "src/kubeforge/__pycache__/cli.pyc"):
        assert not in_context(left_out), left_out


@pytest.mark.parametrize("image", IMAGES, ids=ids)
def test_copied_files_exist_and_are_in_the_build_context(image: Image) -> None:
    df = dockerfile(image)
    for stage in df.stages:
        for copy in stage.all("COPY"):
            words = copy.exec_form()
            if any(w.startswith("--from=") for w in words):
                assert words[0].split("=", 1)[1] in df.stage_names() | {s.base for s in df.stages}
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                path = REPO / source
                assert path.exists(), f"{image.dockerfile}: COPY {source}: no such file in the repository"
                files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
                for f in files:
                    rel = str(f.relative_to(REPO))
                    if "__pycache__" not in rel:
                        assert in_context(rel), f"{image.dockerfile}: COPY {source}: {rel} is in .dockerignore"


# -- Python packages ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", PYTHON_IMAGES, ids=[i.dockerfile for i in PYTHON_IMAGES])
def test_python_pins_are_pyproject_pins(image: Image) -> None:
    pins = pyproject_pins()
    files = [*image.requirements]
    if image.dockerfile == "serving/Dockerfile":
        files.append("serving/requirements-mlflow.txt")
    for path in files:
        for req in requirements(path):
            name = canonicalize_name(req.name)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path}: {req} is not pinned"
            if name in NOT_IN_PYPROJECT and image.dockerfile == "serving/mlflow/Dockerfile":
                continue
            expected = pins.get(SAME_RELEASE.get(name, name))
            assert expected is not None, f"{path}: {req.name} is not a dependency in pyproject.toml"
            assert spec.version == expected, f"{path}: {req.name}=={spec.version}, pyproject.toml pins {expected}"
            # Extras as pyproject.toml asks for them (tritonclient's http and grpc).
            ours = next(
                Requirement(d)
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                if canonicalize_name(Requirement(d).name) == SAME_RELEASE.get(name, name)
            )
            assert req.extras == ours.extras, req
    args = {k: v for s in dockerfile(image).stages for k, v in s.args().items()}
    if image.torch:
        assert args["TORCH_VERSION"] == pins["torch"]
    else:
        assert "TORCH_VERSION" not in args
    # The CUDA trainer swaps XGBoost's CPU build for the GPU build of the same release.
    assert args.get("XGBOOST_VERSION", pins["xgboost-cpu"]) == pins["xgboost-cpu"]


def test_triton_image_takes_the_projects_torch_and_the_release_of_its_tritonclient() -> None:
    df = parse(REPO / "serving/triton/Dockerfile")
    assert df.final.args()["TORCH_VERSION"] == pyproject_pins()["torch"]
    tag = df.final.base.rsplit(":", 1)[1]
    year, month = (int(x) for x in tag.removesuffix("-py3").split("."))
    # NVIDIA's containers carry one Triton release a month: 24.10 is 2.51.0.
    release = 51 + (year - 24) * 12 + (month - 10)
    assert f"2.{release}.0" == pyproject_pins()["tritonclient"], tag


def _installed_closure(reqs: list[Requirement]) -> set[str]:
    """The distributions pip installs for reqs, as this virtualenv's metadata says (same pins, same resolver)."""
    seen: set[str] = set()
    stack = [(r, frozenset(r.extras)) for r in reqs]
    while stack:
        req, extras = stack.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-specific dependency this machine does not use
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in (extras or {""})):
                stack.append((dep, frozenset(dep.extras)))
    return {s for s in seen if "[" not in s}


def _imports_of(dists: set[str]) -> set[str]:
    """Top-level modules the distributions install (a namespace package such as google: any of its owners)."""
    return {
        mod
        for mod, owners in metadata.packages_distributions().items()
        if any(canonicalize_name(o) in dists for o in owners)
    }


def _third_party_imports(entry_modules: tuple[str, ...]) -> set[str]:
    import grimp

    graph = grimp.build_graph("kubeforge", include_external_packages=True, exclude_type_checking_imports=True)
    seen: set[str] = set()
    stack = list(entry_modules)
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        if module.startswith("kubeforge"):
            stack.extend(graph.find_modules_directly_imported_by(module))
    return {m.split(".")[0] for m in seen if not m.startswith("kubeforge")} - set(sys.stdlib_module_names)


def _image_packages(image: Image) -> set[str]:
    reqs = [r for path in image.requirements for r in requirements(path)]
    if image.torch:
        reqs.append(Requirement(f"torch=={pyproject_pins()['torch']}"))
    return _installed_closure(reqs)


@pytest.mark.parametrize("image", KUBEFORGE_IMAGES, ids=[i.dockerfile for i in KUBEFORGE_IMAGES])
def test_requirements_cover_what_the_images_programs_import(image: Image) -> None:
    provided = _imports_of(_image_packages(image))
    missing = _third_party_imports(image.entry_modules) - provided - {"__future__", *image.may_lack}
    assert not missing, f"{image.dockerfile}: the code it runs imports {sorted(missing)}, which it does not install"


# A finder that refuses every third-party module the image does not install, so the commands below start as they
# would in the image (kubeforge's own modules come from the source tree, as the image installs them all).
BLOCKER = """
import importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv.pop(1)))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from kubeforge.cli import main
sys.argv[0] = "kubeforge"
main()
"""


@pytest.mark.parametrize(
    ("image", "command"),
    [(i, c) for i in KUBEFORGE_IMAGES for c in i.commands],
    ids=[f"{i.dockerfile}:{' '.join(c)}" for i in KUBEFORGE_IMAGES for c in i.commands],
)
def test_the_commands_pods_run_start_with_only_the_images_packages(image: Image, command: tuple[str, ...]) -> None:
    provided = _imports_of(_image_packages(image))
    everything = set(metadata.packages_distributions()) - {"kubeforge", "_distutils_hack"}
    blocked = sorted(everything - provided)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, json.dumps(blocked), *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout or "usage" in proc.stdout


@pytest.mark.parametrize("image", KUBEFORGE_IMAGES, ids=[i.dockerfile for i in KUBEFORGE_IMAGES])
def test_entrypoint_and_cmd_are_kubeforge_commands(image: Image) -> None:
    final = dockerfile(image).final
    entrypoint = final.last("ENTRYPOINT")
    cmd = final.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert entrypoint.exec_form() == ["kubeforge"], "pods set their command to `kubeforge ...`: it must be on PATH"
    argv = cmd.exec_form()
    subcommand = argv[: next((n for n, a in enumerate(argv) if a.startswith("-")), len(argv))]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "kubeforge"), *subcommand, "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    # The options of the default command exist too.
    for option in (a for a in argv if a.startswith("--")):
        assert option in proc.stdout, f"{image.dockerfile}: CMD uses {option}, which `kubeforge {subcommand}` lacks"
    path = next(e for e in final.all("ENV") if "PATH=" in e.value)
    assert "/opt/kubeforge/bin" in path.value


def test_mlflow_image_runs_the_mlflow_server() -> None:
    final = parse(REPO / "serving/mlflow/Dockerfile").final
    assert final.last("ENTRYPOINT").exec_form() == ["mlflow"]
    assert final.last("CMD").exec_form()[0] == "server"
    names = {canonicalize_name(r.name) for r in requirements("serving/mlflow/requirements.txt")}
    assert {"mlflow", "psycopg2-binary", "boto3"} <= names


def test_torchrun_is_in_the_trainer_images() -> None:
    """TrainingJobs with several replicas run `torchrun -m kubeforge.training.main`: torch installs torchrun."""
    entry_points = metadata.distribution("torch").entry_points
    assert any(e.name == "torchrun" and e.group == "console_scripts" for e in entry_points)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "kubeforge.training.main", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_triton_image_serves_the_python_backend_model() -> None:
    df = parse(REPO / "serving/triton/Dockerfile")
    assert df.final.last("ENTRYPOINT").exec_form() == ["tritonserver"]
    template = (REPO / "src/kubeforge/serving/python_model.py.tmpl").read_text()
    imported = set(re.findall(r"^import (\w+)", template, re.M)) | set(re.findall(r"^from (\w+)", template, re.M))
    # numpy and triton_python_backend_utils come with NVIDIA's image; torch is what this image adds.
    assert imported - set(sys.stdlib_module_names) == {"numpy", "torch", "triton_python_backend_utils"}
    run = df.final.last("RUN")
    assert '"torch==${TORCH_VERSION}"' in run.value
