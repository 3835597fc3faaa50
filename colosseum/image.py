"""Building the SRN image JARVIS needs, for containers that have no internet.

Colosseum's containers reach nothing outside the reservation, so ``pip
install torch`` cannot run on an SRN.  The image is built once, in two steps:

1. on your machine, ``wheels_command`` downloads the pinned wheels (CPU torch,
   transformers, safetensors and their dependencies, for the image's Python
   and x86_64) into a directory you copy to the team NAS
   (``scp -r DIR file-proxy:/share/nas/<team>/jarvis-wheels``);
2. on one SRN of a reservation running the base image, ``build_commands``
   copies them from the NAS (as srn-user, the only user that reads /share),
   makes a venv from them with no index, checks the imports, and saves the
   container with ``colosseumcli snapshot <name>`` (5-10 minutes; an existing
   image of that name is overwritten without warning).

``fab colosseum-image`` runs step 2 (``--dry-run`` prints it), and
``fab colosseum-wheels`` step 1; docs/colosseum.md walks both.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from testbed.interface import TestbedError
from testbed.shipping import payload_pins

q = shlex.quote
SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9-]{1,32}$")  # colosseumcli snapshot: letters, digits, '-', <= 32 chars
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # CPU wheels: the SRN GPUs need none of CUDA's 2 GB


@dataclass(frozen=True)
class ImagePlan:
    """What building one image means: which SRN, what it is called, where the wheels and the venv live."""

    srn: str
    name: str
    nas_wheels: str  # on the SRN: /share/<dir>
    venv: str = "/root/jarvis-venv"
    python: str = "python3"

    def __post_init__(self) -> None:
        if not SNAPSHOT_NAME.match(self.name):
            raise TestbedError(f"image name {self.name!r}: colosseumcli snapshot takes letters, digits and '-', "
                               "at most 32 characters")


def payload_requirements() -> list[str]:
    """``name==version`` for everything a node imports (JARVIS's own pinned dependencies)."""
    return [f"{name}=={version}" for name, version in payload_pins().items()]


def wheels_command(requirements: list[str], out: str, *, python_version: str = "3.11") -> str:
    """Download wheels for an x86_64 SRN with Python ``python_version`` (no sdists: nothing compiles there)."""
    return (f"pip download --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 "
            f"--python-version {q(python_version)} --index-url {CPU_TORCH_INDEX} "
            f"--extra-index-url https://pypi.org/simple -d {q(out)} " + " ".join(q(r) for r in requirements))


def build_commands(plan: ImagePlan, requirements: list[str]) -> list[str]:
    """On the SRN: wheels from the NAS, a venv from them alone, an import check, the snapshot."""
    staged = f"/tmp/{plan.name}-wheels"
    probe = "import torch, transformers, safetensors, cryptography, uvloop; print(torch.__version__)"
    return [
        f"su srn-user -c {q(f'cp -r {q(plan.nas_wheels)} {q(staged)}')}",
        f"{q(plan.python)} -m venv {q(plan.venv)}",
        f"{q(plan.venv + '/bin/pip')} install --no-index --find-links {q(staged)} "
        + " ".join(q(r) for r in requirements),
        f"{q(plan.venv + '/bin/python')} -c {q(probe)}",
        f"rm -rf {q(staged)}",
        f"colosseumcli snapshot {q(plan.name)}",
    ]


def render(plan: ImagePlan, requirements: list[str]) -> str:
    lines = [f"# Colosseum image {plan.name} built on {plan.srn}; nothing below was executed.",
             f"# Then set `image: {plan.name}` and `python: {plan.venv}/bin/python` in your inventory."]
    lines += [f"  {command}" for command in build_commands(plan, requirements)]
    return "\n".join(lines) + "\n"
