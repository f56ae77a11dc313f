"""What pip installs into an image, computed from pyproject.toml, the one place for versions:
the project's dependencies, less TensorFlow where the base image brings its own (the GPU
image keeps the CUDA TensorFlow of tensorflow/tensorflow:2.21.0-gpu), plus the optional
extras named, whose pins replace the dependencies of the same name (the `gpu` extra's
jax[cuda12]==X replaces jax==X: the same version, with its CUDA plugin).

    python3 docker/requirements.py [--tensorflow-from-base true] [--extras gpu] pyproject.toml
        prints the requirements, one a line (docker/Dockerfile pipes them to pip install -r)
    python3 docker/requirements.py --without-deps pyproject.toml
        prints what is installed afterwards with `pip install --no-deps` ([tool.tlp]
        install-without-deps: keras-hub, whose declared dependencies would pull the full
        tensorflow wheel beside tensorflow-cpu; its real needs are among the dependencies)
    ... --check pyproject.toml
        fails unless every pinned requirement, those installed without dependencies
        included, is installed at its version (for jax[cudaNN], jax-cudaNN-plugin too): the
        image build checks what it installed

Standard library only (and `packaging` for --check): it runs in the base image
before anything is installed.
"""
import argparse
import re
import sys
import tomllib

# Dependencies the base image brings when --tensorflow-from-base is true.
TENSORFLOW = re.compile(r"tensorflow(-cpu)?==")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def name_of(requirement: str) -> str:
    """The canonical distribution name of a requirement string ('jax[cuda12]==1' -> 'jax')."""
    return re.sub(r"[-_.]+", "-", _NAME.match(requirement.strip())[0]).lower()


def requirements(pyproject: dict, tensorflow_from_base: bool = False,
                 extras: tuple[str, ...] = ()) -> list[str]:
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {', '.join(unknown)}; pyproject.toml has "
                         f"{', '.join(optional)}")
    added = [requirement for extra in extras for requirement in optional[extra]]
    replaced = {name_of(requirement) for requirement in added}
    kept = [requirement for requirement in project["dependencies"]
            if name_of(requirement) not in replaced
            and not (tensorflow_from_base and TENSORFLOW.match(requirement))]
    return kept + added


def without_deps(pyproject: dict) -> list[str]:
    """What is installed with `pip install --no-deps` after requirements()."""
    return list(pyproject.get("tool", {}).get("tlp", {}).get("install-without-deps", []))


def check(lines: list[str]) -> list[str]:
    """The problems of this environment against `lines` (pinned with ==); [] if none."""
    import importlib.metadata

    try:  # Installed beside the requirements (keras needs it); Debian's pip de-vendors its own.
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement

    def installed(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    problems = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if not pins:
            continue
        wanted = {requirement.name: pins[0]}
        if requirement.name == "jax":
            wanted.update({f"jax-{extra}-plugin": pins[0] for extra in requirement.extras
                           if re.fullmatch(r"cuda\d+", extra)})
        for name, version in wanted.items():
            found = installed(name)
            if found != version:
                problems.append(f"{name}=={version} wanted, "
                                f"{'not installed' if found is None else found + ' installed'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pyproject")
    parser.add_argument("--tensorflow-from-base", choices=("true", "false"), default="false")
    parser.add_argument("--extras", default="", help="comma-separated, e.g. gpu")
    parser.add_argument("--without-deps", action="store_true",
                        help="print [tool.tlp] install-without-deps instead")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        pyproject = tomllib.load(f)
    lines = requirements(pyproject, args.tensorflow_from_base == "true",
                         tuple(extra for extra in args.extras.split(",") if extra))
    if args.without_deps and not args.check:
        lines = without_deps(pyproject)
    elif args.check:
        lines += without_deps(pyproject)
    if not args.check:
        print("\n".join(lines))
        return 0
    problems = check(lines)
    for problem in problems:
        print(f"requirements: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
