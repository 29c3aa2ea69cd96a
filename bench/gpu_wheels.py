"""Which releases travel to a lent GPU as wheels, which of them it installs, and which of bashgpt's needs a machine
leaves unmet.

    python bench/gpu_wheels.py            # NAME==VERSION for each wheel to carry (bench/gpu_prepare.sh downloads them)

The GPU machine has its own torch and the heavy scientific packages; everything else bashgpt needs, directly or
through another package, travels at the version this environment has (the newest releases CI tests). There, a
carried wheel is installed only where the machine lacks the package or has a version outside a range asked for, so
torch keeps the packages it was installed with wherever they serve. Nothing is imported: only metadata is read.
"""

import email.parser
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

# What the GPU image has and keeps (KINDS.md of the device tool lists them): neither carried nor looked into.
IMAGE_KEEPS = {"torch", "numpy", "scipy", "pyarrow", "pandas", "matplotlib", "psutil", "pyyaml"}
# bashgpt's extras the check uses: ShellCheck for eval, torch-optimi for the memory planner's adamw-bf16.
EXTRAS = ("shellcheck", "lean")
# The lent machine, for requirements that hold only on some platforms.
GPU_MACHINE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def applicable(texts: list[str] | None, machine: dict | None = None, extras: tuple[str, ...] = ("",)):
    """The requirements among ``texts`` whose markers hold on ``machine`` (default: this one) for one of ``extras``."""
    for text in texts or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**(machine or {}), "extra": e}) for e in extras):
            yield req


def installed_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def wheel_metadata(path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(path) as wheel:
        meta = next(n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        message = email.parser.Parser().parsestr(wheel.read(meta).decode("utf-8"))
    return message["Name"], message["Version"], message.get_all("Requires-Dist") or []


def choose_wheels(paths, dist: str = "bashgpt") -> tuple[list, dict, list[str]]:
    """(the wheels to install, {package: version} kept from this machine, problems): ``dist``'s own wheel, then for
    each package it needs, directly or through a package installed from a wheel, this machine's release where it is
    in range, else the carried wheel."""
    carried = {}
    for path in paths:
        name, ver, reqs = wheel_metadata(path)
        carried[key(name)] = (path, name, ver, reqs)
    if key(dist) not in carried:
        return [], {}, [f"missing wheel: {dist}'s own; run bash bench/gpu_prepare.sh and carry .gpu"]
    install, kept, problems, todo = {key(dist)}, {}, [], [key(dist)]
    while todo:
        needer = todo.pop()
        _, needer_name, _, reqs = carried[needer]
        for req in applicable(reqs, extras=("", *EXTRAS) if needer == key(dist) else ("",)):
            k = key(req.name)
            if k in install:
                if not req.specifier.contains(carried[k][2], prereleases=True):
                    problems.append(f"{req.name} {carried[k][2]} (carried) is outside {needer_name}'s range "
                                    f"{req.specifier}")
                continue
            have = kept.get(k) or installed_version(req.name)
            if have and req.specifier.contains(have, prereleases=True):
                kept[k] = have
            elif k in carried and req.specifier.contains(carried[k][2], prereleases=True):
                kept.pop(k, None)
                install.add(k)
                todo.append(k)
            else:
                problems.append(f"missing wheel: {req} ({needer_name} needs it; this machine has "
                                f"{have or 'none'}); carry it (bench/gpu_prepare.sh)")
    return [carried[k][0] for k in sorted(install)], kept, problems


def closure(dist: str = "bashgpt", machine: dict | None = None, extras: tuple[str, ...] = EXTRAS):
    """(who needs it, requirement, installed version or None) for every package ``dist`` (with its ``extras``)
    needs, directly or not, without looking into what the image keeps. ``machine``: marker values (default: this
    one's)."""
    seen, todo = set(), [dist]
    while todo:
        name = todo.pop()
        for req in applicable(requires(name), machine, ("", *extras) if name == dist else ("",)):
            have = installed_version(req.name)
            yield name, req, have
            if have is not None and key(req.name) not in seen and key(req.name) not in IMAGE_KEEPS:
                seen.add(key(req.name))
                todo.append(req.name)


def unmet_requirements(dist: str = "bashgpt") -> list[str]:
    """One line for each package ``dist`` needs that is missing here or outside the range asked for."""
    problems = []
    for needer, req, have in closure(dist):
        if have is None:
            problems.append(f"missing wheel: {req.name} ({needer} needs {req}); carry it (bench/gpu_prepare.sh)")
        elif not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req.name} {have} is outside {needer}'s range {req.specifier}; carry a wheel of it "
                            f"(bench/gpu_prepare.sh)")
    return problems


def to_carry(dist: str = "bashgpt") -> list[str]:
    """NAME==VERSION of each package to carry: the closure for the GPU machine, less what its image keeps."""
    found = {key(req.name): f"{req.name}=={have}" for _, req, have in closure(dist, GPU_MACHINE)
             if have is not None and key(req.name) not in IMAGE_KEEPS}
    return sorted(found.values(), key=str.lower)


if __name__ == "__main__":
    missing = [f"{req.name} ({needer})" for needer, req, have in closure("bashgpt", GPU_MACHINE) if have is None]
    if missing:
        sys.exit(f"not installed here, so its version is unknown: {', '.join(missing)}; run this with the Python of "
                 f"a venv that has bashgpt installed (pip install -e '.[dev]')")
    print("\n".join(to_carry()))
