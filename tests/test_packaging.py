"""A normal (non-editable) install carries the built-in banks and never writes into itself."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from convcli import bank

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, timeout=300)
    (path,) = out.glob("convcli-*.whl")
    return path


def test_wheel_contains_the_builtin_banks(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for yaml in (ROOT / "kernels").glob("*.yaml"):
        assert f"convcli/kernels/{yaml.name}" in names


def test_installed_package_finds_its_banks_and_keeps_its_folder_clean(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target), CONVCLI_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONDONTWRITEBYTECODE="1")
    for path in target.rglob("*"):  # a read-only install, as in a system site-packages
        path.chmod(path.stat().st_mode & ~0o222)
    before = sorted(target.rglob("*"))
    code = "from convcli import bank; print(bank.kernels_dir()); print(*bank.builtin_names())"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    where, names = p.stdout.splitlines()
    assert Path(where) == target / "convcli" / "kernels"
    assert names.split() == bank.builtin_names()
    sample = ROOT / "samples" / "camera.png"
    p = subprocess.run([sys.executable, "-m", "convcli", "apply", str(sample), "-f", "sobel_x",
                        "--engine", "jit", "-o", str(tmp_path / "out")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "camera" / "sobel_x.png").is_file()
    assert sorted(target.rglob("*")) == before  # (root ignores the read-only bits, so check)
    assert any((tmp_path / "cache").rglob("*.nbi"))
