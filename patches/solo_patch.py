#!/usr/bin/env python3
"""Install solo-learn's GitHub main (commit 9187ea3), patched for today's stack, in one step.

    python patches/solo_patch.py                    # patch and install solo-learn main
    python patches/solo_patch.py --source SRC       # SRC: a .tar.gz archive, a checkout, a URL
    python patches/solo_patch.py --extras umap      # also install solo-learn's umap extra
    python patches/solo_patch.py --check            # report the state, change nothing

The source is ``--source``, else ``$SOLO_LEARN_SOURCE``, else an installed, non-editable
solo-learn 1.0.6 (pristine or patched by this tool) is patched from its own files, else GitHub's
archive of the commit is downloaded. What it does, touching nothing until every check passed:

1. reads every file of the source and checks it against the checksums of pristine main
   (``solo-learn-9187ea3.sha256``); one file that differs and nothing is changed;
2. applies all ``NN-*.patch`` files of this folder strictly (exact context, no fuzz), in memory:
   all apply or nothing is written;
3. builds a wheel ``solo_learn-1.0.6+iclmsr`` holding the patched ``solo`` package, metadata
   read from the patched ``requirements.txt`` and ``setup.py`` and a record of the patches
   (``iclmsr_patches.json`` and the patch texts, in its dist-info), and installs it with pip,
   which resolves its dependencies (and honours ``PIP_CONSTRAINT``);
4. writes upstream's ``tests/`` folder to ``<venv>/solo-learn-tests/tests`` (``--tests-dir``),
   outside any source tree, so that the suite runs against the installed wheel.

Re-running with the same patches is a no-op; with a changed patch set it rebuilds. Only the
standard library is used, so the step runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
COMMIT = "9187ea39c2c3f43c455ab06664d2b019a9802954"
SHORT = COMMIT[:7]
UPSTREAM = "https://github.com/vturrisi/solo-learn"
DEFAULT_SOURCE = f"{UPSTREAM}/archive/{COMMIT}.tar.gz"
PRISTINE_VERSION = "1.0.6"
PATCHED_VERSION = f"{PRISTINE_VERSION}+iclmsr"
CHECKSUMS = HERE / f"solo-learn-{SHORT}.sha256"
RECORD_NAME = "iclmsr_patches.json"
TESTS_MARKER = ".solo-learn-tests.json"
SOURCE_ENV = "SOLO_LEARN_SOURCE"
MAIN = f"solo-learn main {SHORT}"


class PatchError(RuntimeError):
    """A check failed; nothing was changed."""


# --------------------------------------------------------------------------------------------
# Unified diffs
# --------------------------------------------------------------------------------------------
@dataclass
class Hunk:
    old_start: int  # 1-based line number in the old file
    old: List[str]  # lines removed or kept, with their newline
    new: List[str]  # lines added or kept


@dataclass
class Patch:
    name: str
    header: str  # the comment lines: what breaks, why, how the fix works
    text: str
    files: Dict[str, List[Hunk]] = field(default_factory=dict)  # relpath -> hunks


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(text: str, name: str = "<patch>") -> Patch:
    """Parse a unified diff whose paths are ``a/<relpath>`` and ``b/<relpath>``."""
    lines = text.splitlines(keepends=True)
    header = "".join(line for line in lines if line.startswith("#") and not line.startswith("#!"))
    patch = Patch(name=name, header=header, text=text)
    i, current = 0, None
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            target = lines[i + 1][4:].split("\t")[0].strip()
            if not target.startswith("b/"):
                raise PatchError(f"{name}: expected a path 'b/...', got {target!r}")
            current = patch.files.setdefault(target[2:], [])
            i += 2
            continue
        match = _HUNK.match(line)
        if match:
            if current is None:
                raise PatchError(f"{name}: hunk before any file header at line {i + 1}")
            old_len = int(match.group(2) or 1)
            new_len = int(match.group(4) or 1)
            hunk = Hunk(old_start=int(match.group(1)), old=[], new=[])
            i += 1
            while (len(hunk.old) < old_len or len(hunk.new) < new_len) and i < len(lines):
                body = lines[i]
                tag, content = body[:1], body[1:]
                if tag == " ":
                    hunk.old.append(content)
                    hunk.new.append(content)
                elif tag == "-":
                    hunk.old.append(content)
                elif tag == "+":
                    hunk.new.append(content)
                elif body.startswith("\\"):
                    pass
                else:
                    raise PatchError(f"{name}: malformed hunk line {i + 1}: {body!r}")
                i += 1
                if i < len(lines) and lines[i].startswith("\\"):  # "\ No newline at end of file"
                    target_list = hunk.new if tag == "+" else hunk.old
                    target_list[-1] = target_list[-1].rstrip("\n")
                    if tag == " ":
                        hunk.new[-1] = hunk.new[-1].rstrip("\n")
                    i += 1
            if len(hunk.old) != old_len or len(hunk.new) != new_len:
                raise PatchError(f"{name}: hunk at line {hunk.old_start} is truncated")
            current.append(hunk)
            continue
        i += 1
    if not patch.files:
        raise PatchError(f"{name}: no file changes found")
    return patch


def apply_hunks(text: str, hunks: Sequence[Hunk], reverse: bool = False, where: str = "") -> str:
    """Apply hunks strictly: every hunk's context must match exactly at its stated line."""
    lines = text.splitlines(keepends=True)
    out: List[str] = []
    pos = 0  # index in `lines` of the next line not yet copied
    shift = 0  # new-file line numbers run ahead of old-file ones by this much (reverse mode)
    for hunk in hunks:
        before, after = (hunk.new, hunk.old) if reverse else (hunk.old, hunk.new)
        start = hunk.old_start - 1 + (shift if reverse else 0)
        if not before:  # pure insertion: unified diff numbers the line before it
            start += 1
        if start < pos or lines[start:start + len(before)] != before:
            raise PatchError(f"{where}: hunk at line {hunk.old_start} does not match")
        out.extend(lines[pos:start])
        out.extend(after)
        pos = start + len(before)
        shift += len(hunk.new) - len(hunk.old)
    out.extend(lines[pos:])
    return "".join(out)


def load_patches(folder: Path = HERE) -> List[Patch]:
    """The patch set: ``NN-*.patch`` files of ``folder`` in name order."""
    paths = sorted(p for p in folder.glob("*.patch") if re.match(r"\d\d-", p.name))
    return [parse_patch(_decode(p.read_bytes(), p.name), p.name) for p in paths]


def patch_set_digest(patches: Iterable[Patch]) -> str:
    """One sha256 over the names and texts of a patch set."""
    digest = hashlib.sha256()
    for patch in patches:
        digest.update(patch.name.encode() + b"\0" + patch.text.encode() + b"\0")
    return digest.hexdigest()


def targets(patches: Iterable[Patch]) -> List[str]:
    """Every file a patch set touches."""
    return sorted({path for patch in patches for path in patch.files})


def apply_patch_set(sources: Mapping[str, str], patches: Sequence[Patch],
                    reverse: bool = False) -> Dict[str, str]:
    """Return the patched texts of every file the patches touch (all or an exception)."""
    result = dict(sources)
    for patch in reversed(patches) if reverse else patches:
        for relpath, hunks in patch.files.items():
            if relpath not in result:
                raise PatchError(f"{patch.name}: target {relpath} not found")
            result[relpath] = apply_hunks(result[relpath], hunks, reverse,
                                          f"{patch.name}:{relpath}")
    return {path: result[path] for path in targets(patches)}


def restrict(patches: Sequence[Patch], paths: Iterable[str]) -> List[Patch]:
    """The patches with only their changes to ``paths`` (e.g. the files an installation has)."""
    keep = set(paths)
    return [Patch(p.name, p.header, p.text, {f: h for f, h in p.files.items() if f in keep})
            for p in patches]


def patch_files(files: Mapping[str, bytes], patches: Sequence[Patch]) -> Dict[str, bytes]:
    """All files, with the patched ones replaced (in memory; all or an exception)."""
    sources = {}
    for path in targets(patches):
        if path not in files:
            raise PatchError(f"{path}, which the patches change, is missing")
        sources[path] = _decode(files[path], path)
    patched = dict(files)
    patched.update({p: t.encode("utf-8") for p, t in apply_patch_set(sources, patches).items()})
    return patched


def whole_file_from_patches(relpath: str, patches: Sequence[Patch]) -> Optional[str]:
    """The pristine text of ``relpath`` if the first patch touching it shows the whole file.

    The patches of ``requirements.txt`` and ``setup.py`` are written with whole-file context,
    so the metadata of an installed solo-learn (which ships neither file) can be rebuilt; the
    text is only used once it matches the pristine checksum.
    """
    for patch in patches:
        hunks = patch.files.get(relpath)
        if hunks is None:
            continue
        if len(hunks) != 1 or hunks[0].old_start not in (0, 1):
            return None
        text = "".join(hunks[0].old)
        return text if pristine_checksums().get(relpath) == sha256(text.encode("utf-8")) else None
    return None


# --------------------------------------------------------------------------------------------
# Sources and checksums
# --------------------------------------------------------------------------------------------
def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")  # exact bytes: no newline translation
    except UnicodeDecodeError:
        raise PatchError(f"{where} is not UTF-8 text") from None


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def pristine_checksums(path: Optional[Path] = None) -> Dict[str, str]:
    """relpath -> sha256 of every file of pristine solo-learn main (``sha256sum`` format)."""
    table = {}
    for line in (path or CHECKSUMS).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, relpath = line.split(maxsplit=1)
            table[relpath] = digest
    return table


def _ignored(relpath: str) -> bool:
    """Paths of a checkout that are not part of the source: VCS and build leftovers."""
    parts = PurePosixPath(relpath).parts
    return (any(p.startswith(".") or p == "__pycache__" or p.endswith(".egg-info") for p in parts)
            or relpath.endswith((".pyc", ".pyo")) or parts[0] in ("build", "dist"))


def _files_of_archive(data: bytes, where: str) -> Dict[str, bytes]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = archive.getmembers()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise PatchError(f"{where} is not a readable .tar.gz archive ({error})") from None
    tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
    if len(tops) != 1:
        raise PatchError(f"{where}: expected one top-level folder, found {len(tops)}")
    files = {}
    for member in members:
        parts = PurePosixPath(member.name).parts[1:]
        if member.isdir() or not parts:
            continue
        relpath = "/".join(parts)
        if ".." in parts or member.name.startswith("/"):
            raise PatchError(f"{where}: unsafe path {member.name!r} in the archive")
        if not member.isfile():
            raise PatchError(f"{where}: {relpath} is a link or special file; expected plain files")
        if not _ignored(relpath):
            files[relpath] = archive.extractfile(member).read()
    return files


def _files_of_folder(root: Path) -> Dict[str, bytes]:
    files = {}
    for path in sorted(root.rglob("*")):
        relpath = path.relative_to(root).as_posix()
        if path.is_file() and not _ignored(relpath):
            files[relpath] = path.read_bytes()
    return files


def read_source(spec: str) -> Dict[str, bytes]:
    """relpath -> bytes of every file of a source: a URL, a ``.tar.gz`` archive or a folder."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", spec):
        try:
            with urllib.request.urlopen(spec, timeout=120) as response:  # noqa: S310
                data = response.read()
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise PatchError(f"cannot download {spec} ({reason}); pass --source (or set "
                             f"{SOURCE_ENV}) with a local archive or checkout of {MAIN}") from None
        return _files_of_archive(data, spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _files_of_folder(path)
    if path.is_file():
        return _files_of_archive(path.read_bytes(), spec)
    raise PatchError(f"solo-learn source {spec} does not exist; pass --source (or set "
                     f"{SOURCE_ENV}) with an archive, a checkout or a URL of {MAIN}")


def _names(paths: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_pristine(files: Mapping[str, bytes], where: str) -> None:
    """Refuse, naming the files, unless ``files`` is exactly pristine solo-learn main."""
    expected = pristine_checksums()
    differ = sorted(p for p in files if p in expected and sha256(files[p]) != expected[p])
    unknown = sorted(p for p in files if p not in expected)
    missing = sorted(p for p in expected if p not in files)
    problems = []
    if differ:
        problems.append(f"{_names(differ)} differ{'s' if len(differ) == 1 else ''} from pristine")
    if unknown:
        problems.append(f"{_names(unknown)} {'is' if len(unknown) == 1 else 'are'} not part of")
    if missing:
        problems.append(f"{_names(missing)} {'is' if len(missing) == 1 else 'are'} missing from")
    if problems:
        raise PatchError(f"{where}: {'; '.join(problems)} {MAIN}; nothing was changed. Use an "
                         f"unmodified archive or checkout of commit {COMMIT}.")


# --------------------------------------------------------------------------------------------
# Metadata from the patched sources
# --------------------------------------------------------------------------------------------
def requirements_of(text: str) -> List[str]:
    """The requirements of a ``requirements.txt`` (comments and blank lines dropped)."""
    requirements = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            raise PatchError(f"requirements.txt: option lines are not supported ({line!r})")
        requirements.append(re.sub(r"\s*,\s*", ",", line))
    return requirements


def setup_arguments(text: str) -> Dict[str, object]:
    """The literal keyword arguments of the ``setup(...)`` call of a ``setup.py``, not run."""
    tree = ast.parse(text)
    constants: Dict[str, object] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            arguments = {}
            for keyword in node.keywords:
                value = keyword.value
                if isinstance(value, ast.Name) and value.id in constants:
                    arguments[keyword.arg] = constants[value.id]
                else:
                    try:
                        arguments[keyword.arg] = ast.literal_eval(value)
                    except ValueError:
                        pass
            return arguments
    raise PatchError("setup.py: no setup(...) call found")


def build_metadata(requirements_txt: str, setup_py: str, patches: Sequence[Patch]) -> str:
    """METADATA of the patched wheel: requirements and extras as the patched files say."""
    setup = setup_arguments(setup_py)
    if setup.get("version") != PRISTINE_VERSION:
        raise PatchError(f"setup.py says version {setup.get('version')!r}, expected "
                         f"{PRISTINE_VERSION}; these patches are for {MAIN} only")
    lines = [
        "Metadata-Version: 2.1",
        "Name: solo-learn",
        f"Version: {PATCHED_VERSION}",
        f"Summary: solo-learn main (commit {SHORT}) with solo-iclmsr's compatibility patches",
        f"Home-page: {setup.get('url', UPSTREAM)}",
    ]
    for key, name in (("author", "Author"), ("author_email", "Author-email"),
                      ("license", "License")):
        if setup.get(key):
            lines.append(f"{name}: {setup[key]}")
    if setup.get("keywords"):
        lines.append("Keywords: " + ",".join(setup["keywords"]))
    lines += [f"Classifier: {c}" for c in setup.get("classifiers", [])]
    lines += [f"Requires-Dist: {r}" for r in requirements_of(requirements_txt)]
    for extra, requirements in sorted(dict(setup.get("extras_require", {})).items()):
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {r}; extra == "{extra}"' for r in requirements]
    description = [
        "", f"solo-learn's GitHub main at commit {COMMIT} (version {PRISTINE_VERSION}),",
        "patched by solo-iclmsr's patches/solo_patch.py with:", "",
    ] + [f"* {p.name}" for p in patches]
    return "\n".join(lines + description) + "\n"


# --------------------------------------------------------------------------------------------
# The wheel
# --------------------------------------------------------------------------------------------
def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


@dataclass
class Plan:
    """What the patch step installs: the wheel's files and the upstream tests."""

    contents: Dict[str, bytes]  # path in the wheel -> bytes, RECORD excluded
    record: dict  # the patch record written to the dist-info
    tests: Optional[Dict[str, bytes]]  # tests/... -> bytes, None without a source


def make_plan(files: Mapping[str, bytes], patches: Sequence[Patch],
              license_text: Optional[bytes] = None, partial: bool = False) -> Plan:
    """Patch ``files`` (pristine main) in memory and lay out the wheel and the tests.

    ``partial``: ``files`` are those of an installation (the package and the two files the
    metadata comes from); changes to other files, such as the top-level scripts, are left out.
    """
    patched = patch_files(files, restrict(patches, files) if partial else patches)
    for needed in ("requirements.txt", "setup.py", "solo/__init__.py"):
        if needed not in patched:
            raise PatchError(f"{needed} is missing from the solo-learn source")
    meta = build_metadata(_decode(patched["requirements.txt"], "requirements.txt"),
                          _decode(patched["setup.py"], "setup.py"), patches)
    # The `solo` package and its data files. Upstream's find_packages(exclude=["tests", ...])
    # keeps the tests.* subpackages, which would install a top-level `tests` package: they are
    # written to a tests folder of their own instead (see write_tests).
    package = {p: d for p, d in patched.items() if p.startswith("solo/")}
    checksums = pristine_checksums()
    record = {
        "upstream": UPSTREAM,
        "commit": COMMIT,
        "base_version": PRISTINE_VERSION,
        "version": PATCHED_VERSION,
        "patch_set": patch_set_digest(patches),
        "patches": [{"name": p.name, "sha256": sha256(p.text.encode()), "files": sorted(p.files)}
                    for p in patches],
        "files": {p: {"sha256": sha256(d), "pristine": checksums.get(p)}
                  for p, d in sorted(package.items())},
    }
    info = f"solo_learn-{PATCHED_VERSION}.dist-info"
    contents: Dict[str, bytes] = dict(package)
    contents[f"{info}/METADATA"] = meta.encode()
    contents[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: solo-iclmsr patches/solo_patch.py\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n").encode()
    contents[f"{info}/top_level.txt"] = b"solo\n"
    if license_text is None:
        license_text = files.get("LICENSE")
    if license_text is not None:
        contents[f"{info}/LICENSE"] = license_text
    contents[f"{info}/{RECORD_NAME}"] = (json.dumps(record, indent=2) + "\n").encode()
    for patch in patches:
        contents[f"{info}/iclmsr_patches/{patch.name}"] = patch.text.encode()
    tests = {p: d for p, d in patched.items() if p.startswith("tests/")} or None
    return Plan(contents=contents, record=record, tests=tests)


def build_wheel(plan: Plan, out_dir: Path) -> Path:
    """Write ``solo_learn-1.0.6+iclmsr-py3-none-any.whl`` (reproducible) and return its path."""
    info = f"solo_learn-{PATCHED_VERSION}.dist-info"
    contents = dict(plan.contents)
    lines = [_record_line(path, data) for path, data in sorted(contents.items())]
    lines.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(lines) + "\n").encode()
    wheel = out_dir / f"solo_learn-{PATCHED_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in sorted(contents.items()):
            entry = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    return wheel


# --------------------------------------------------------------------------------------------
# The installed distribution
# --------------------------------------------------------------------------------------------
def find_distribution() -> Optional[metadata.Distribution]:
    """The ``solo-learn`` distribution this interpreter imports, or None."""
    try:
        return metadata.distribution("solo-learn")
    except metadata.PackageNotFoundError:
        return None


def is_editable(dist: metadata.Distribution) -> bool:
    """True for ``pip install -e`` (or ``setup.py develop``) installs."""
    direct = dist.read_text("direct_url.json")
    if direct:
        try:
            if json.loads(direct).get("dir_info", {}).get("editable"):
                return True
        except ValueError:
            pass
    return not any(str(f).replace("\\", "/") == "solo/__init__.py" for f in dist.files or [])


def installed_files(dist: metadata.Distribution) -> Dict[str, bytes]:
    """relpath -> bytes of the installed ``solo`` package files (byte code excluded)."""
    files = {}
    for item in dist.files or []:
        path = str(item).replace("\\", "/")
        if path.startswith("solo/") and not _ignored(path):
            location = Path(dist.locate_file(item))
            if location.is_file():
                files[path] = location.read_bytes()
    return files


def recorded_patches(dist: metadata.Distribution) -> Optional[List[Patch]]:
    """The patches a patched install recorded in its dist-info, or None."""
    record = dist.read_text(RECORD_NAME)
    if record is None:
        return None
    try:
        entries = json.loads(record)["patches"]
    except (ValueError, KeyError):
        return None
    return [parse_patch(dist.read_text(f"iclmsr_patches/{entry['name']}") or "", entry["name"])
            for entry in entries]


def installed_state(patches: Sequence[Patch]) -> Tuple[str, Optional[metadata.Distribution]]:
    """``absent``, ``pristine``, ``patched`` (with exactly these patches), ``outdated`` (with
    other patches), ``modified``, ``editable`` or ``unsupported version X``."""
    dist = find_distribution()
    if dist is None:
        return "absent", None
    if dist.version not in (PRISTINE_VERSION, PATCHED_VERSION):
        return f"unsupported version {dist.version}", dist
    if is_editable(dist):
        return "editable", dist
    files = installed_files(dist)
    if dist.version == PRISTINE_VERSION:
        expected = pristine_checksums()
        wanted = [p for p in expected if p.startswith("solo/") and p.endswith(".py")]
        ok = (all(p in files for p in wanted)
              and all(expected.get(p) == sha256(d) for p, d in files.items()))
        return ("pristine" if ok else "modified"), dist
    try:
        record = json.loads(dist.read_text(RECORD_NAME) or "null")
        recorded = {p: entry["sha256"] for p, entry in record["files"].items()}
    except (ValueError, KeyError, TypeError):
        return "modified", dist
    if recorded != {p: sha256(d) for p, d in files.items()}:
        return "modified", dist
    return ("patched" if record.get("patch_set") == patch_set_digest(patches) else "outdated"), dist


def pristine_from_installation(dist: metadata.Distribution,
                               patches: Sequence[Patch]) -> Dict[str, bytes]:
    """Pristine main's files, rebuilt from an installed solo-learn 1.0.6 (pristine or patched).

    The ``solo`` package comes from the installation (a patched one is reverted with the patches
    it recorded); ``requirements.txt`` and ``setup.py`` from the whole-file patches; each file is
    checked against the pristine checksums.
    """
    files = installed_files(dist)
    if dist.version == PATCHED_VERSION:
        solo_patches = restrict(recorded_patches(dist) or [], files)
        touched = targets(solo_patches)
        sources = {p: _decode(files[p], p) for p in touched}
        files.update({p: t.encode() for p, t in
                      apply_patch_set(sources, solo_patches, reverse=True).items()})
    expected = pristine_checksums()
    bad = sorted(p for p, d in files.items() if expected.get(p) != sha256(d))
    missing = sorted(p for p in expected
                     if p.startswith("solo/") and p.endswith(".py") and p not in files)
    if bad or missing:
        raise PatchError(
            f"installed solo-learn at {dist.locate_file('')}: {_names(bad + missing)} "
            f"{'missing or ' if missing else ''}not as in {MAIN}; nothing was changed. Pass "
            f"--source (an archive or checkout of commit {COMMIT}) to reinstall it.")
    for relpath in ("requirements.txt", "setup.py"):
        text = whole_file_from_patches(relpath, patches)
        if text is None:
            raise PatchError(f"cannot rebuild {relpath} of {MAIN} from the patches; pass --source "
                             f"(an archive or checkout of commit {COMMIT})")
        files[relpath] = text.encode("utf-8")
    return files


def _license_of(dist: metadata.Distribution) -> Optional[bytes]:
    for name in ("LICENSE", "LICENSE.txt", "licenses/LICENSE"):
        text = dist.read_text(name)
        if text is not None:
            return text.encode("utf-8")
    return None


# --------------------------------------------------------------------------------------------
# The upstream tests
# --------------------------------------------------------------------------------------------
PYTEST_INI = """\
# solo-learn main's own tests, written by solo-iclmsr's patches/solo_patch.py to run against the
# installed, patched solo-learn (this folder holds no `solo` to shadow it). This file stops
# pytest from reading a configuration file of a folder above.
[pytest]
"""


def default_tests_dir() -> Optional[Path]:
    """``<venv>/solo-learn-tests`` when running in a virtual environment, else None."""
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        return Path(sys.prefix) / "solo-learn-tests"
    return None


def write_tests(tests: Mapping[str, bytes], dest: Path, record: Mapping) -> bool:
    """Write ``tests/`` and a pytest.ini to ``dest`` (replacing only a folder written here).

    Returns False when ``dest`` already holds exactly these files.
    """
    marker = {"commit": COMMIT, "patch_set": record["patch_set"],
              "files": {p: sha256(d) for p, d in sorted(tests.items())}}
    wanted = dict(tests)
    wanted["pytest.ini"] = PYTEST_INI.encode()
    wanted[TESTS_MARKER] = (json.dumps(marker, indent=2) + "\n").encode()
    marker_path = dest / TESTS_MARKER
    if marker_path.is_file():
        current = _files_of_folder(dest)
        current[TESTS_MARKER] = marker_path.read_bytes()
        if current == wanted:
            return False
    elif dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise PatchError(f"{dest} exists and was not written by this tool; remove it or pass "
                         f"another --tests-dir")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".solo-learn-tests-", dir=dest.parent))
    for relpath, data in wanted.items():
        target = staging / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    return True


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
def _pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q",
                             *args])
    if result.returncode != 0:
        raise PatchError(f"`pip {' '.join(args)}` failed (exit {result.returncode}; its output "
                         f"is above); fix that and run this again")


def _extras_satisfied(dist: Optional[metadata.Distribution], extras: Sequence[str]) -> bool:
    """Whether every distribution an extra names is installed (versions are left to pip)."""
    if not extras:
        return True
    if dist is None:
        return False
    for requirement in dist.requires or []:
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*).*;\s*extra\s*==\s*['\"]([^'\"]+)['\"]",
                         requirement)
        if match and match.group(2) in extras:
            try:
                metadata.distribution(match.group(1))
            except metadata.PackageNotFoundError:
                return False
    return True


def ensure_patched(source: Optional[str] = None, tests_dir: Optional[Path] = None,
                   extras: Sequence[str] = (), patches: Optional[Sequence[Patch]] = None,
                   ) -> List[str]:
    """The patch step. Returns one line per thing it did."""
    patches = load_patches() if patches is None else list(patches)
    state, dist = installed_state(patches)
    if state == "editable":
        raise PatchError(
            f"solo-learn is installed in editable mode from {dist.locate_file('')}; this step "
            f"installs a patched wheel instead: run `pip uninstall solo-learn`, then this again "
            f"with --source pointing at that checkout")
    messages: List[str] = []
    if source is None and state in ("pristine", "patched", "outdated"):
        where = f"installed solo-learn {dist.version} at {dist.locate_file('')}"
        files = pristine_from_installation(dist, patches)
        plan = make_plan(files, patches, _license_of(dist), partial=True)
    elif source is None and state == "modified":
        raise PatchError(
            f"installed solo-learn {dist.version} at {dist.locate_file('')} has files changed "
            f"by hand; nothing was changed. Pass --source (an archive or checkout of commit "
            f"{COMMIT}) to reinstall it.")
    else:
        where = source or DEFAULT_SOURCE
        files = read_source(where)
        check_pristine(files, where)
        plan = make_plan(files, patches)
    if state == "patched" and _extras_satisfied(dist, extras):
        messages.append(f"solo-learn {PATCHED_VERSION} already carries these {len(patches)} "
                        f"patches: nothing to do.")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = build_wheel(plan, Path(tmp))
            # Replace the files first (same version: pip would keep the old ones), then let pip
            # resolve the dependencies of the installed metadata.
            _pip("install", "--no-deps", "--force-reinstall", str(wheel))
            _pip("install", f"{wheel}[{','.join(extras)}]" if extras else str(wheel))
        new_state, _ = installed_state(patches)
        if new_state != "patched":
            raise PatchError(f"after installing, solo-learn is {new_state}, not patched; "
                             f"check `python -m pip list` for a second solo-learn")
        messages.append(f"solo-learn main {SHORT} from {where}: {len(patches)} patches "
                        f"({', '.join(p.name for p in patches)}) applied, installed as "
                        f"{PATCHED_VERSION}" + (f" with [{','.join(extras)}]" if extras else "")
                        + ".")
    if plan.tests is None:
        if tests_dir is not None and not (tests_dir / TESTS_MARKER).is_file():
            messages.append(f"upstream tests not written to {tests_dir}: an installed "
                            f"solo-learn has no tests/; pass --source to write them.")
    elif tests_dir is None:
        messages.append("upstream tests not written (not in a virtual environment): pass "
                        "--tests-dir DIR to write them.")
    elif write_tests(plan.tests, tests_dir, plan.record):
        messages.append(f"upstream tests written to {tests_dir}/tests.")
    return messages


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; one-line errors and exit code 2 when a check fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report the state; change nothing")
    parser.add_argument("--source", default=os.environ.get(SOURCE_ENV) or None,
                        help=f"solo-learn main: a .tar.gz archive, a checkout or a URL "
                             f"(default: ${SOURCE_ENV}, else an installed 1.0.6, else "
                             f"{DEFAULT_SOURCE})")
    parser.add_argument("--tests-dir", type=Path, default=default_tests_dir(),
                        help="where upstream's tests/ is written "
                             "(default: <venv>/solo-learn-tests)")
    parser.add_argument("--extras", default="",
                        help="comma-separated extras of solo-learn to install too, e.g. umap")
    args = parser.parse_args(argv)
    try:
        patches = load_patches()
        if args.check:
            state, dist = installed_state(patches)
            where = f" {dist.version} at {dist.locate_file('')}" if dist is not None else ""
            print(f"solo-learn: {state}{where} ({len(patches)} patches in {HERE.name}/)")
            return 0 if state == "patched" else 1
        extras = [e.strip() for e in args.extras.split(",") if e.strip()]
        for line in ensure_patched(args.source, args.tests_dir, extras, patches):
            print(line)
    except PatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
