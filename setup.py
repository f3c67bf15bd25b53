"""Build hook: generate the protobuf and gRPC modules from protos/.

The generated code lives in gen/ (ignored by git and the linters) and is
installed as the ``bookverse.recommendations.v1`` package.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "protos"
GEN_ROOT = ROOT / "gen"


def generate_protos() -> None:
    """Run protoc (from grpcio-tools) over every .proto under protos/."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    GEN_ROOT.mkdir(exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={GEN_ROOT}",
        f"--pyi_out={GEN_ROOT}",
        f"--grpc_python_out={GEN_ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")
    for package in {Path(p).parent for p in protos}:
        for level in (package, *package.parents):
            if str(level) != ".":
                (GEN_ROOT / level / "__init__.py").touch()
    (GEN_ROOT / "bookverse" / "recommendations" / "v1" / "py.typed").touch()


class BuildWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


# setuptools checks that every package folder exists before any command runs,
# so the code is generated as soon as the build backend loads this file.
generate_protos()
setup(cmdclass={"build_py": BuildWithProtos})
