"""The patch step for solo-learn main: strict patches, refusal, all-or-nothing, idempotence,
honest metadata, --check, the real archive and patch set, and the import check's messages.

Most tests use a small synthetic "solo-learn main" and patches written here; pip is replaced by a
stand-in that unpacks the wheel into a temporary site folder. Nothing touches the network.
"""

import difflib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "patches" / "solo_patch.py"
ARCHIVE = REPO / ".." / "shared" / "vendor" / "solo-learn-9187ea3.tar.gz"
needs_archive = pytest.mark.skipif(not ARCHIVE.is_file(),
                                   reason=f"vendored archive {ARCHIVE} not present")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return sys.modules[name]


sp = _load("solo_patch", TOOL)
upstream_tests = _load("upstream_tests", REPO / "patches" / "upstream_tests.py")
solo_check = _load("solo_iclmsr_plugin_solo_check",
                   REPO / "solo_iclmsr" / "solo_check.py")

# --------------------------------------------------------------------------------------------
# A synthetic solo-learn main
# --------------------------------------------------------------------------------------------
SETUP_PY = '''import os

from setuptools import find_packages, setup

KW = ["self-supervised"]
EXTRA_REQUIREMENTS = {"umap": ["umap-learn"], "h5": ["h5py"]}

with open(os.path.join(os.path.dirname(__file__), "requirements.txt")) as fo:
    REQUIREMENTS = [line.strip() for line in fo if line.strip()]

setup(
    name="solo-learn",
    packages=find_packages(exclude=["tests"]),
    version="1.0.6",
    license="MIT",
    url="https://github.com/vturrisi/solo-learn",
    keywords=KW,
    install_requires=REQUIREMENTS,
    extras_require=EXTRA_REQUIREMENTS,
)
'''
PRISTINE = {
    "setup.py": SETUP_PY,
    "requirements.txt": "torch>=1.10.0\nlightning==2.1.2\ntorchmetrics>=0.6.0, <0.12.0\nwandb\n",
    "LICENSE": "MIT License\n",
    "main_knn.py": "from solo.utils.knn import knn\n\nknn(3)\n",
    "solo/__init__.py": "",
    "solo/utils/__init__.py": "",
    "solo/utils/knn.py": "def knn(k):\n    kwargs = dict(compute_on_step=False)\n    return k\n",
    "solo/utils/misc.py": "import logging\n\n\ndef note():\n    logging.warn('x')\n",
    "solo/data/classes.txt": "n01\nn02\n",
    "tests/__init__.py": "",
    "tests/test_knn.py": "from solo.utils.knn import knn\n\n\ndef test_knn():\n    assert knn(1)\n",
}


def _diff(path, old, new, context=3):
    lines = difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                 f"a/{path}", f"b/{path}", n=context)
    return "".join(lines)


def _patch(name, header, *diffs):
    text = "".join(f"# {line}\n" for line in header) + "".join(diffs)
    return sp.parse_patch(text, name)


def _requirements_patch():
    old = PRISTINE["requirements.txt"]
    new = "torch>=2.4\nlightning>=2.1.2\ntorchmetrics>=1.0\n"
    setup_new = SETUP_PY.replace('"h5": ["h5py"]}', '"h5": ["h5py"], "wandb": ["wandb"]}')
    return _patch("01-requirements.patch",
                  ["pins that no longer install", "floors instead; wandb an extra"],
                  _diff("requirements.txt", old, new, context=99),
                  _diff("setup.py", SETUP_PY, setup_new, context=99))


def _knn_patch():
    old = PRISTINE["solo/utils/knn.py"]
    return _patch("02-knn.patch", ["compute_on_step is rejected", "dropped"],
                  _diff("solo/utils/knn.py", old, old.replace("compute_on_step=False", "")),
                  _diff("main_knn.py", PRISTINE["main_knn.py"],
                        PRISTINE["main_knn.py"].replace("knn(3)", "knn(k=3)")))


def _warn_patch():
    old = PRISTINE["solo/utils/misc.py"]
    return _patch("03-logging.patch", ["logging.warn is gone in 3.13", "logging.warning"],
                  _diff("solo/utils/misc.py", old, old.replace("warn(", "warning(")))


def _files(tree=PRISTINE):
    return {path: text.encode() for path, text in tree.items()}


def _write_tree(root, files):
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Synthetic checksums, a site folder for the installed distribution, a pip stand-in."""
    sums = tmp_path / "sums.sha256"
    sums.write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {p}\n"
                            for p, d in sorted(_files().items())))
    monkeypatch.setattr(sp, "CHECKSUMS", sums)
    site = tmp_path / "site"
    site.mkdir()

    def find_distribution():
        found = list(metadata.distributions(name="solo-learn", path=[str(site)]))
        return found[0] if found else None

    calls = []

    def fake_pip(*args):
        calls.append(args)
        wheel = args[-1].split("[")[0]
        if "--force-reinstall" in args:
            for old in site.glob("solo_learn-*.dist-info"):
                shutil.rmtree(old)
            shutil.rmtree(site / "solo", ignore_errors=True)
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)

    monkeypatch.setattr(sp, "find_distribution", find_distribution)
    monkeypatch.setattr(sp, "_pip", fake_pip)
    source = _write_tree(tmp_path / "source", _files())
    return {"site": site, "pip": calls, "source": source, "tests": tmp_path / "upstream-tests"}


# --------------------------------------------------------------------------------------------
# Diffs
# --------------------------------------------------------------------------------------------
def test_hunks_apply_exactly_and_in_reverse():
    patches = [_requirements_patch(), _knn_patch(), _warn_patch()]
    sources = {p: PRISTINE[p] for p in sp.targets(patches)}
    patched = sp.apply_patch_set(sources, patches)
    assert patched["solo/utils/misc.py"].count("logging.warning(") == 1
    assert "compute_on_step" not in patched["solo/utils/knn.py"]
    assert sp.apply_patch_set(patched, patches, reverse=True) == sources
    with pytest.raises(sp.PatchError, match="does not match"):  # twice: context is gone
        sp.apply_patch_set(patched, patches)


def test_whole_file_patches_give_back_the_pristine_files(env):
    patches = [_requirements_patch(), _warn_patch()]
    assert sp.whole_file_from_patches("requirements.txt", patches) == PRISTINE["requirements.txt"]
    assert sp.whole_file_from_patches("setup.py", patches) == SETUP_PY
    assert sp.whole_file_from_patches("solo/utils/misc.py", patches) is None  # starts at line 2


# --------------------------------------------------------------------------------------------
# Refusal and all-or-nothing
# --------------------------------------------------------------------------------------------
def test_a_hand_edited_file_is_refused_by_name_and_nothing_is_written(env):
    victim = env["source"] / "solo" / "utils" / "knn.py"
    victim.write_bytes(victim.read_bytes() + b"# local edit\n")
    with pytest.raises(sp.PatchError) as error:
        sp.ensure_patched(str(env["source"]), env["tests"], patches=[_knn_patch()])
    message = str(error.value)
    assert "solo/utils/knn.py differs from pristine" in message and "\n" not in message
    assert "nothing was changed" in message
    assert env["pip"] == [] and not env["tests"].exists()
    assert list(env["site"].iterdir()) == []


def test_an_extra_or_missing_file_is_refused(env):
    files = _files()
    files["solo/new_module.py"] = b"x = 1\n"
    del files["LICENSE"]
    with pytest.raises(sp.PatchError, match=r"solo/new_module\.py is not part of.*LICENSE is "
                                            r"missing"):
        sp.check_pristine(files, "src")
    # what a checkout carries besides the source is ignored
    files = _files()
    files.update({".git/HEAD": b"ref\n", "solo/__pycache__/knn.cpython-311.pyc": b"\0"})
    sp.check_pristine({p: d for p, d in files.items() if not sp._ignored(p)}, "src")


def test_one_hunk_that_does_not_match_applies_nothing(env):
    good, broken = _knn_patch(), _warn_patch()
    broken.files["solo/utils/misc.py"][0].old[-1] = "    logging.warn('not this')\n"
    with pytest.raises(sp.PatchError, match=r"03-logging\.patch:solo/utils/misc\.py: hunk at "
                                            r"line \d+ does not match"):
        sp.ensure_patched(str(env["source"]), env["tests"], patches=[good, broken])
    assert env["pip"] == [] and not env["tests"].exists()
    assert list(env["site"].iterdir()) == []


# --------------------------------------------------------------------------------------------
# The step: install, idempotent re-run, changed patch set, installed mode
# --------------------------------------------------------------------------------------------
def test_patch_step_installs_then_reruns_as_a_noop_and_rebuilds_on_a_new_patch_set(env):
    patches = [_requirements_patch(), _knn_patch()]
    assert sp.installed_state(patches)[0] == "absent"
    lines = sp.ensure_patched(str(env["source"]), env["tests"], ["umap"], patches)
    assert len(env["pip"]) == 2 and env["pip"][1][-1].endswith(".whl[umap]")
    assert "installed as 1.0.6+iclmsr" in lines[0]
    assert sp.installed_state(patches)[0] == "patched"
    site = env["site"]
    assert (site / "solo/utils/knn.py").read_text() == PRISTINE["solo/utils/knn.py"].replace(
        "compute_on_step=False", "")
    assert (site / "solo/data/classes.txt").is_file()  # package data travels
    assert not (site / "tests").exists() and not (site / "main_knn.py").exists()
    # upstream's tests, pristine, outside the source, with a pytest.ini that stops the ini search
    assert (env["tests"] / "tests" / "test_knn.py").read_text() == PRISTINE["tests/test_knn.py"]
    assert (env["tests"] / "pytest.ini").read_text().rstrip().endswith("[pytest]")

    # the same patches again: nothing happens
    env["pip"].clear()
    before = {p: p.stat().st_mtime_ns for p in env["tests"].rglob("*")}
    lines = sp.ensure_patched(str(env["source"]), env["tests"], ["umap"], patches)
    assert env["pip"] == [] and "nothing to do" in lines[0] and len(lines) == 1
    assert {p: p.stat().st_mtime_ns for p in env["tests"].rglob("*")} == before

    # a changed patch set: outdated, then rebuilt from the installation itself (no source)
    bigger = patches + [_warn_patch()]
    assert sp.installed_state(bigger)[0] == "outdated"
    lines = sp.ensure_patched(None, env["tests"], [], bigger)
    assert "from installed solo-learn 1.0.6+iclmsr" in lines[0]
    assert sp.installed_state(bigger)[0] == "patched"
    assert "logging.warning(" in (site / "solo/utils/misc.py").read_text()
    record = json.loads(next(site.glob("*.dist-info")).joinpath(sp.RECORD_NAME).read_text())
    assert [p["name"] for p in record["patches"]] == [p.name for p in bigger]
    # and back: the smaller set reverts the third patch
    sp.ensure_patched(None, env["tests"], [], patches)
    assert (site / "solo/utils/misc.py").read_text() == PRISTINE["solo/utils/misc.py"]


def test_a_pristine_installation_is_patched_from_its_own_files(env):
    site = env["site"]
    package = {p: d for p, d in _files().items() if p.startswith("solo/")}
    _write_tree(site, package)
    info = site / "solo_learn-1.0.6.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: solo-learn\nVersion: 1.0.6\n")
    (info / "RECORD").write_text("".join(f"{p},,\n" for p in package))
    patches = [_requirements_patch(), _knn_patch()]
    assert sp.installed_state(patches)[0] == "pristine"
    from_installation = sp.make_plan(sp.pristine_from_installation(
        sp.find_distribution(), patches), patches, _files()["LICENSE"], partial=True)
    from_source = sp.make_plan(_files(), patches)
    assert from_installation.contents == from_source.contents
    lines = sp.ensure_patched(None, env["tests"], [], patches)
    assert sp.installed_state(patches)[0] == "patched"
    assert any("pass --source to write them" in line for line in lines)


def test_an_editable_installation_is_refused(env):
    info = env["site"] / "solo_learn-1.0.6.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: solo-learn\nVersion: 1.0.6\n")
    (info / "RECORD").write_text("__editable__.solo_learn-1.0.6.pth,,\n")
    (info / "direct_url.json").write_text(json.dumps(
        {"url": "file:///src/solo-learn", "dir_info": {"editable": True}}))
    assert sp.installed_state([_knn_patch()])[0] == "editable"
    with pytest.raises(sp.PatchError, match="editable mode.*pip uninstall solo-learn"):
        sp.ensure_patched(str(env["source"]), env["tests"], patches=[_knn_patch()])
    assert env["pip"] == []


# --------------------------------------------------------------------------------------------
# The wheel
# --------------------------------------------------------------------------------------------
def test_wheel_has_honest_metadata_the_version_and_the_patch_record(env, tmp_path):
    patches = [_requirements_patch(), _knn_patch(), _warn_patch()]
    wheel = sp.build_wheel(sp.make_plan(_files(), patches), tmp_path)
    assert wheel.name == "solo_learn-1.0.6+iclmsr-py3-none-any.whl"
    info = "solo_learn-1.0.6+iclmsr.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(f"{info}/METADATA").decode()
        record = json.loads(archive.read(f"{info}/{sp.RECORD_NAME}"))
        for line in archive.read(f"{info}/RECORD").decode().splitlines():
            path, digest, _ = line.split(",")
            if digest:
                assert sp._record_line(path, archive.read(path)) == line
        assert archive.read(f"{info}/iclmsr_patches/02-knn.patch").decode() == patches[1].text
    assert "Version: 1.0.6+iclmsr" in meta.splitlines()
    requires = [line[len("Requires-Dist: "):] for line in meta.splitlines()
                if line.startswith("Requires-Dist: ")]
    assert requires == ["torch>=2.4", "lightning>=2.1.2", "torchmetrics>=1.0",
                        'h5py; extra == "h5"', 'umap-learn; extra == "umap"',
                        'wandb; extra == "wandb"']
    assert "Provides-Extra: wandb" in meta and "==2.1.2" not in meta
    assert record["version"] == "1.0.6+iclmsr" and record["commit"] == sp.COMMIT
    assert record["patch_set"] == sp.patch_set_digest(patches)
    assert [p["name"] for p in record["patches"]] == [p.name for p in patches]
    assert all(n.startswith(("solo/", info)) for n in names)  # no tests/, no top-level scripts


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def _cli(site, *args):
    """The tool without site-packages (-S), seeing only ``site``: the standard library suffices."""
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop(sp.SOURCE_ENV, None)
    return subprocess.run([sys.executable, "-S", str(TOOL), *args], capture_output=True,
                          text=True, env=env, cwd=REPO)


def _real_files():
    return sp.read_source(str(ARCHIVE))


def _install_plan(site, plan):
    wheel = sp.build_wheel(plan, site)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    wheel.unlink()


def test_check_exit_codes_absent_and_unsupported(tmp_path):
    result = _cli(tmp_path, "--check")
    assert result.returncode == 1 and result.stdout.startswith("solo-learn: absent")
    info = tmp_path / "solo_learn-1.0.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: solo-learn\nVersion: 1.0.2\n")
    result = _cli(tmp_path, "--check")
    assert result.returncode == 1
    assert result.stdout.startswith("solo-learn: unsupported version 1.0.2")


@needs_archive
def test_check_exit_codes_pristine_patched_outdated_modified(tmp_path, monkeypatch):
    files = _real_files()
    site = tmp_path / "site"
    package = {p: d for p, d in files.items() if p.startswith("solo/")}
    _write_tree(site, package)
    info = site / "solo_learn-1.0.6.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: solo-learn\nVersion: 1.0.6\n")
    (info / "RECORD").write_text("".join(f"{p},,\n" for p in package))
    result = _cli(site, "--check")
    assert result.returncode == 1 and result.stdout.startswith("solo-learn: pristine 1.0.6")

    shutil.rmtree(site)
    site.mkdir()
    patches = sp.load_patches()
    _install_plan(site, sp.make_plan(files, patches))
    result = _cli(site, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("solo-learn: patched 1.0.6+iclmsr")

    monkeypatch.setattr(sp, "find_distribution", lambda: next(iter(
        metadata.distributions(name="solo-learn", path=[str(site)]))))
    assert sp.installed_state(patches[:-1])[0] == "outdated"

    (site / "solo" / "utils" / "knn.py").write_text("# edited by hand\n")
    result = _cli(site, "--check")
    assert result.returncode == 1 and result.stdout.startswith("solo-learn: modified")


@needs_archive
def test_cli_refuses_an_edited_archive_with_one_line_and_exit_code_2(tmp_path):
    edited = tmp_path / "edited.tar.gz"
    with tarfile.open(ARCHIVE) as src, tarfile.open(edited, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("/solo/utils/knn.py"):
                data += b"# local edit\n"
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    result = _cli(tmp_path / "site", "--source", str(edited), "--tests-dir",
                  str(tmp_path / "tests"))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "solo/utils/knn.py differs from pristine solo-learn main 9187ea3" in result.stderr
    assert not (tmp_path / "tests").exists()
    result = _cli(tmp_path / "site", "--source", str(tmp_path / "nowhere.tar.gz"))
    assert result.returncode == 2 and "does not exist" in result.stderr


# --------------------------------------------------------------------------------------------
# The real archive and patch set
# --------------------------------------------------------------------------------------------
def test_every_real_patch_is_documented_numbered_and_leaves_assertions_alone():
    patches = sp.load_patches()
    assert len(patches) >= 4
    for patch in patches:
        assert patch.name[:2].isdigit() and patch.name[2] == "-", patch.name
        assert len(patch.header.splitlines()) >= 2, f"{patch.name} needs a header: what, why, how"
        for path, hunks in patch.files.items():
            if path.startswith("tests/"):
                changed = [l for h in hunks for l in set(h.old) ^ set(h.new)]
                assert not any("assert" in l for l in changed), patch.name


@needs_archive
def test_vendored_archive_is_pristine_main_and_every_patch_applies():
    files = _real_files()
    assert len(files) == len(sp.pristine_checksums())
    sp.check_pristine(files, str(ARCHIVE))
    patches = sp.load_patches()
    plan = sp.make_plan(files, patches)
    meta = plan.contents["solo_learn-1.0.6+iclmsr.dist-info/METADATA"].decode()
    assert "Requires-Dist: lightning==" not in meta and "<0.12" not in meta
    assert "Requires-Dist: wandb\n" not in meta
    # the installed-mode rebuild of the metadata files works with the real patches
    for relpath in ("requirements.txt", "setup.py"):
        assert sp.whole_file_from_patches(relpath, patches) == files[relpath].decode()
    # upstream's tests are shipped unpatched unless a patch says otherwise
    touched = set(sp.targets(patches))
    assert all(plan.tests[p] == files[p] for p in plan.tests if p not in touched)


@needs_archive
def test_every_skipped_upstream_test_exists():
    files = _real_files()
    for nodeid in upstream_tests.NEEDS_NETWORK:
        path, name = nodeid.split("::")
        assert f"\ndef {name}(" in files[path].decode(), nodeid


# --------------------------------------------------------------------------------------------
# The import check
# --------------------------------------------------------------------------------------------
def _fake_dist(folder, version, record=False, editable=False):
    info = folder / f"solo_learn-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: solo-learn\nVersion: {version}\n")
    if record:
        (info / "iclmsr_patches.json").write_text("{}\n")
    if editable:
        (info / "direct_url.json").write_text(json.dumps(
            {"url": "file:///src/solo-learn", "dir_info": {"editable": True}}))


@pytest.mark.parametrize("version, record, editable, expected", [
    ("1.0.6+iclmsr", True, False, None),
    ("1.0.6", False, False, "solo-learn main 1.0.6 is installed but not patched"),
    ("1.0.6", False, True, "editable mode"),
    ("1.0.6+iclmsr", False, False, "without its patch record"),
    ("1.0.2", False, False, "solo-learn 1.0.2 (the 2021 PyPI release) is installed"),
    ("1.0.2+iclmsr", True, False, "solo-learn 1.0.2+iclmsr (the 2021 PyPI release)"),
    ("1.0.8", False, False, "solo-learn 1.0.8 is installed, but solo-iclmsr needs"),
])
def test_solo_problem_messages(tmp_path, monkeypatch, version, record, editable, expected):
    _fake_dist(tmp_path, version, record, editable)
    (tmp_path / "solo").mkdir()
    (tmp_path / "solo" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    # Python finds an imported module in sys.modules first: solo as the fake install holds it.
    monkeypatch.delitem(sys.modules, "solo", raising=False)
    problem = solo_check.solo_problem()
    if expected is None:
        assert problem is None
        solo_check.require_solo()
        return
    assert expected in problem and "\n" not in problem
    assert "make install" in problem and "python patches/solo_patch.py" in problem
    if version.startswith("1.0.2") or version == "1.0.8":
        assert "GitHub main" in problem and "1.0.6+iclmsr" in problem
    with pytest.raises(ImportError, match="make install"):
        solo_check.require_solo()


def test_solo_problem_is_none_when_solo_learn_is_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert solo_check.solo_problem() is None
    with pytest.raises(ImportError, match=r"solo-learn is not installed.*make install"):
        solo_check.require_solo()
