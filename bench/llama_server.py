"""Build llama.cpp's own `llama-server` from the same source tree as our llama-cpp-python, once.

The sdist of llama-cpp-python 0.3.36 vendors the exact llama.cpp our engine runs, so the comparison
is the batching loop, not the kernels. Everything lives in a cache folder outside the repository.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("QFSERVE_BENCH_CACHE", Path.home() / ".cache" / "qfserve-bench"))


def _run(*command: str, cwd: Path | None = None) -> None:
    print("$", " ".join(command), file=sys.stderr)
    subprocess.run(command, cwd=cwd, check=True)


def source_tree() -> Path:
    found = glob.glob(str(CACHE / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"))
    if found:
        return Path(found[0])
    CACHE.mkdir(parents=True, exist_ok=True)
    _run(sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
         f"llama-cpp-python=={VERSION}", "-d", str(CACHE))
    archive = next(CACHE.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    _run("tar", "xzf", str(archive), cwd=CACHE)
    return CACHE / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"


def ensure_tool(name: str) -> Path:
    """Build one of llama.cpp's programs (`llama-server`, `llama-batched-bench`) once."""
    binary = CACHE / "build" / "bin" / name
    if binary.exists():
        return binary
    build = CACHE / "build"
    if not (build / "CMakeCache.txt").exists():
        _run("cmake", "-S", str(source_tree()), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
             "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON")
    _run("cmake", "--build", str(build), "--target", name, "-j", str(os.cpu_count() or 2))
    return binary


def ensure_llama_server() -> Path:
    return ensure_tool("llama-server")


if __name__ == "__main__":
    # `python -m bench.llama_server [llama-batched-bench]`
    print(ensure_tool(sys.argv[1] if len(sys.argv) > 1 else "llama-server"))
