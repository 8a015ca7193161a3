"""buffers/, agents/ and kernels/ are installed as memkit.buffers, memkit.agents, memkit.kernels."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import memkit.agents
import memkit.buffers
import memkit.kernels

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"buffers": memkit.buffers, "agents": memkit.agents, "kernels": memkit.kernels}


@pytest.mark.parametrize("folder", sorted(MAPPED))
def test_the_installed_subpackages_are_the_repository_folders(folder):
    assert Path(MAPPED[folder].__file__).resolve() == ROOT / folder / "__init__.py"


def test_no_generic_top_level_module_is_importable():
    code = "import importlib.util as u; print([n for n in ('buffers', 'agents', 'kernels') " \
           "if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_wheel_installs_the_mapped_layout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("memkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for folder in MAPPED:
        assert f"memkit/{folder}/__init__.py" in names
        assert not any(n.startswith(f"{folder}/") for n in names)
    assert "memkit/buffers/reservoir.py" in names and "memkit/kernels/reservoir.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = ("import memkit.buffers, memkit.agents, memkit.kernels, memkit.registry as r;"
            "print(memkit.buffers.__file__); print(r.available('store')['store'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(target)}).stdout
    path, stores = out.strip().splitlines()
    assert Path(path).resolve() == (target / "memkit" / "buffers" / "__init__.py").resolve()
    assert "reservoir" in stores
