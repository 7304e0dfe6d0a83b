"""The patch step for solo-learn 1.0.2: well-formed patches, idempotence, refusal, honest metadata."""

import importlib.util
import json
import re
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("solo_patch", REPO / "patches" / "solo_patch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("solo_patch", module)
    spec.loader.exec_module(module)
    return module


sp = _load_tool()
PATCHES = sp.load_patches()
SITE = Path(metadata.distribution("solo-learn").locate_file(""))


@pytest.fixture()
def pristine_tree(tmp_path):
    """A folder holding the pristine 1.0.2 text of every file the patches touch."""
    for relpath in sp.targets(PATCHES):
        target = tmp_path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sp.pristine_source(relpath).encode("utf-8"))
    return tmp_path


def test_every_patch_is_documented_and_numbered():
    assert len(PATCHES) >= 8
    for patch in PATCHES:
        assert patch.name[:2].isdigit() and patch.name.endswith(".patch")
        assert len(patch.header.splitlines()) >= 2, f"{patch.name} needs a header: what, why, how"
        assert patch.files


def test_test_files_are_patched_separately_and_never_in_assertions():
    for patch in PATCHES:
        touches_tests = any(path.startswith("tests/") for path in patch.files)
        touches_solo = any(path.startswith("solo/") for path in patch.files)
        assert not (touches_tests and touches_solo), f"{patch.name} mixes solo and test files"
        if touches_tests:
            for hunks in patch.files.values():
                for hunk in hunks:
                    removed = [l for l in hunk.old if l not in hunk.new]
                    added = [l for l in hunk.new if l not in hunk.old]
                    assert not any("assert" in l for l in removed + added), patch.name


def test_installed_solo_is_patched_with_exactly_these_patches():
    state, dist = sp.installed_state(PATCHES)
    assert state == "patched"
    record = json.loads(dist.read_text(sp.RECORD_NAME))
    assert record["patch_set"] == sp.patch_set_digest(PATCHES)
    assert [p["name"] for p in record["patches"]] == [p.name for p in PATCHES]


def test_reverting_the_patches_gives_the_pristine_checksums(pristine_tree):
    expected = sp.pristine_checksums()
    for relpath in sp.targets(PATCHES):
        assert sp.sha256((pristine_tree / relpath).read_bytes()) == expected[relpath], relpath
        assert (SITE / relpath).read_bytes() != (pristine_tree / relpath).read_bytes()


def test_patching_twice_changes_nothing_the_second_time(pristine_tree):
    assert sp.tree_state(pristine_tree, PATCHES) == "pristine"
    assert sp.patch_tree(pristine_tree, PATCHES) is True
    after_first = {p: (pristine_tree / p).read_bytes() for p in sp.targets(PATCHES)}
    assert after_first == {p: (SITE / p).read_bytes() for p in sp.targets(PATCHES)}
    assert sp.tree_state(pristine_tree, PATCHES) == "patched"
    assert sp.patch_tree(pristine_tree, PATCHES) is False
    assert {p: (pristine_tree / p).read_bytes() for p in after_first} == after_first


def test_a_modified_file_is_refused_and_nothing_is_touched(pristine_tree):
    victim = "solo/utils/lars.py"
    assert victim in sp.targets(PATCHES)
    (pristine_tree / victim).write_bytes((pristine_tree / victim).read_bytes() + b"# local edit\n")
    before = {p: (pristine_tree / p).read_bytes() for p in sp.targets(PATCHES)}
    assert sp.tree_state(pristine_tree, PATCHES) == "modified"
    with pytest.raises(sp.PatchError, match=r"solo/utils/lars\.py \(modified\).*nothing was changed"):
        sp.patch_tree(pristine_tree, PATCHES)
    assert {p: (pristine_tree / p).read_bytes() for p in before} == before


def test_a_patch_that_does_not_match_applies_nothing(pristine_tree):
    # The last solo patch with one removed line altered: its context no longer matches.
    last = [p for p in PATCHES if any(f.startswith("solo/") for f in p.files)][-1]
    text = re.sub(r"\n-(?!--)", "\n-#", last.text, count=1)
    broken = sp.parse_patch(text, "99-broken.patch")
    patches = [p for p in PATCHES if p is not last] + [broken]
    before = {p: (pristine_tree / p).read_bytes() for p in sp.targets(PATCHES)}
    with pytest.raises(sp.PatchError, match="does not match"):
        sp.patch_tree(pristine_tree, patches)
    assert {p: (pristine_tree / p).read_bytes() for p in before} == before


def test_rebuilt_wheel_has_honest_metadata_and_a_valid_record(pristine_tree, tmp_path_factory):
    dist = metadata.distribution("solo-learn")
    files = sp.installed_files(dist)
    files.update({p: (pristine_tree / p).read_bytes() for p in sp.targets(PATCHES)})
    sources = {p: files[p].decode("utf-8") for p in sp.targets(PATCHES)}
    files.update({p: t.encode("utf-8") for p, t in sp.apply_patch_set(sources, PATCHES).items()})
    out = tmp_path_factory.mktemp("wheel")
    wheel = sp.build_wheel(files, dist.read_text("METADATA"), None, PATCHES, out)
    assert wheel.name == "solo_learn-1.0.2+iclmsr-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        info = "solo_learn-1.0.2+iclmsr.dist-info"
        meta = archive.read(f"{info}/METADATA").decode()
        assert "Version: 1.0.2+iclmsr" in meta
        assert "torch==1.9.1" not in meta and "lightning-bolts" not in meta
        assert "Requires-Dist: pytorch-lightning>=2.1" in meta
        for line in archive.read(f"{info}/RECORD").decode().splitlines():
            path, digest, size = line.split(",")
            if digest:
                assert sp._record_line(path, archive.read(path)) == line
        assert archive.read("solo/utils/lars.py") == (SITE / "solo/utils/lars.py").read_bytes()


def test_installed_metadata_is_honest_and_pip_check_is_clean():
    requires = metadata.requires("solo-learn")
    pinned = [r for r in requires if re.match(r"^[A-Za-z0-9_.-]+\s*\(?==", r)]
    assert not pinned, pinned
    assert not any(r.startswith("lightning-bolts") for r in requires)
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_flag_reports_the_state():
    result = subprocess.run([sys.executable, str(REPO / "patches" / "solo_patch.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("solo-learn: patched")


def test_patch_step_rerun_is_a_noop():
    result = subprocess.run([sys.executable, str(REPO / "patches" / "solo_patch.py")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout


@pytest.mark.parametrize("version", ["1.0.2", "1.0.6"])
def test_import_with_unpatched_solo_prints_the_one_line_fix(tmp_path, version):
    info = tmp_path / f"solo_learn-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: solo-learn\nVersion: {version}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    result = subprocess.run([sys.executable, "-c", "import solo_iclmsr"], capture_output=True,
                            text=True, env=env, cwd=tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: solo-learn ")
    assert "make install" in last and "python patches/solo_patch.py" in last
