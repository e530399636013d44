"""What the library needs installed, checked before anything heavy is imported: a missing requirement is one line
naming it and the install commands, exit 2, never a traceback from deep inside an import.

    require()                    # raises MissingRequirement naming every requirement that is not installed
    with requirements_checked(): # an import that fails for want of a requirement raises MissingRequirement too
        import torch

`require` asks the import system where each package is, without importing it (a millisecond for all of them), so
that a package imported only by the worker processes (transformers) or only at the end of the run (matplotlib) is
found missing at the start, not hours later. `requirements_checked` covers a package that is there but fails to
import as missing (a half-removed install).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from utils.errors import UserError

# Import name → the name pip installs it by: requirements_t5.txt's lines above "# tests and linting"
REQUIREMENTS = {
    "torch": "torch",
    "transformers": "transformers",
    "sentencepiece": "sentencepiece",
    "google.protobuf": "protobuf",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "huggingface_hub": "huggingface_hub",
    "yaml": "pyyaml",
    "numpy": "numpy",
    "tqdm": "tqdm",
    "h5py": "h5py",
    "pyarrow": "pyarrow",
    "matplotlib": "matplotlib",
}
# What the Python API's Embedder needs: not the writers' (h5py, pyarrow) nor the report's (matplotlib)
ENGINE_REQUIREMENTS = ("torch", "transformers", "sentencepiece", "google.protobuf", "tokenizers", "safetensors",
                       "huggingface_hub", "yaml", "numpy", "tqdm")  # fmt: skip
INSTALL = (
    "install the requirements as README.md says: on a CPU machine `pip install torch==2.13.0 && pip install -r "
    "requirements_t5.txt`; on a GPU machine the CUDA build of torch for your GPU (https://pytorch.org), then "
    "`pip install -r requirements_t5.txt`"
)


class MissingRequirement(UserError, ImportError):
    """A requirement is not installed: one line naming it and the install commands. An ImportError, so that
    `from utils import Embedder` fails as an import does; a UserError, so that the scripts print it and exit 2."""

    def __init__(self, problem: str, package: str):
        super().__init__(f"{problem}; {INSTALL}")
        self.name = package


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # the parent package missing (google.protobuf), or a module set to None
        return False


def missing_requirements(modules: Iterable[str] = tuple(REQUIREMENTS)) -> list[str]:
    """The pip names of the requirements (of `modules`, import names) that are not installed, in
    requirements_t5.txt's order."""
    return [REQUIREMENTS[module] for module in modules if not _installed(module)]


def require(modules: Iterable[str] = tuple(REQUIREMENTS)) -> None:
    missing = missing_requirements(modules)
    if missing:
        what = f"{missing[0]} is" if len(missing) == 1 else f"{', '.join(missing)} are"
        raise MissingRequirement(f"{what} not installed in this Python ({sys.executable})", missing[0])


def requirement_of(module: str | None) -> str | None:
    """The pip name of the requirement that provides `module` (torch._C → torch), or None when it is not one."""
    if not module:
        return None
    for name, package in REQUIREMENTS.items():
        if module == name or module.startswith(name + "."):
            return package
    return None


@contextmanager
def requirements_checked() -> Iterator[None]:
    """Imports inside: a ModuleNotFoundError for a requirement becomes MissingRequirement (the chain dropped: the
    frames inside the package say nothing a user can act on); any other stays as it is."""
    try:
        yield
    except ModuleNotFoundError as exc:
        package = requirement_of(exc.name)
        if package is None:
            raise
        raise MissingRequirement(f"{package} cannot be imported ({exc})", package) from None
