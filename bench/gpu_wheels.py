"""Which releases travel to a lent GPU as wheels, and which of bashgpt's needs a machine leaves unmet.

    python bench/gpu_wheels.py            # NAME==VERSION for each wheel to carry (bench/gpu_prepare.sh downloads them)

The GPU machine has its own torch and the heavy scientific packages; everything else bashgpt needs, directly or
through another package, travels at the version this environment has (the newest releases CI tests), so the GPU
runs the code CI ran. Nothing is imported: only installed packages' metadata is read.
"""

import sys
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


def closure(dist: str = "bashgpt", machine: dict | None = None, extras: tuple[str, ...] = EXTRAS):
    """(who needs it, requirement, installed version or None) for every package ``dist`` (with its ``extras``)
    needs, directly or not, without looking into what the image keeps. ``machine``: marker values (default: this
    one's)."""
    seen, todo = set(), [dist]
    while todo:
        name = todo.pop()
        for text in requires(name) or []:
            req = Requirement(text)
            wanted = ("", *extras) if name == dist else ("",)
            if req.marker and not any(req.marker.evaluate({**(machine or {}), "extra": e}) for e in wanted):
                continue
            try:
                have = version(req.name)
            except PackageNotFoundError:
                have = None
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
