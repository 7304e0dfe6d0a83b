#!/usr/bin/env python3
"""Patch solo-learn 1.0.2 for torch 2 / Lightning 2 / Python 3.11, in one idempotent step.

    python patches/solo_patch.py            # check, patch, rebuild and reinstall solo-learn
    python patches/solo_patch.py --check    # report the state, change nothing
    python patches/solo_patch.py --install  # first install pristine solo-learn 1.0.2 if absent

What it does, in order, touching nothing until every check has passed:
1. finds the installed ``solo-learn`` distribution of this interpreter; it must be 1.0.2
   (pristine) or ``1.0.2+iclmsr`` (patched by this tool);
2. verifies every file of it against the checksums of the pristine 1.0.2 wheel
   (``solo-learn-1.0.2.sha256``); a patched install is first reverted with the patches it
   recorded, so a changed patch set upgrades cleanly;
3. applies all ``NN-*.patch`` files of this folder, strictly (exact context, no fuzz), in memory:
   all apply or nothing is written;
4. builds a wheel ``solo_learn-1.0.2+iclmsr`` holding the patched files, honest dependency
   metadata (the original pins torch==1.9.1 and needs lightning-bolts) and a record of the
   patches (``iclmsr_patches.json`` and the patch texts in its dist-info), and installs it with
   pip over the original. Re-running with the same patches is a no-op.

Only the standard library is used, so the tool runs before anything else works.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
PRISTINE_VERSION = "1.0.2"
PATCHED_VERSION = "1.0.2+iclmsr"
RECORD_NAME = "iclmsr_patches.json"
CHECKSUMS = HERE / "solo-learn-1.0.2.sha256"
FIX_COMMAND = "make install (or: python patches/solo_patch.py) in the solo-iclmsr checkout"

# The patched distribution's dependencies: what the patched code really needs.
REQUIRES = [
    "torch>=2.1",
    "torchvision>=0.16",
    "pytorch-lightning>=2.1",
    "torchmetrics>=1.0",
    "einops",
    "timm>=0.9",
    "tqdm",
    "scipy",
    "wandb; extra == 'wandb'",
    "matplotlib; extra == 'umap'",
    "seaborn; extra == 'umap'",
    "pandas; extra == 'umap'",
    "umap-learn; extra == 'umap'",
]


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
        if lines[start:start + len(before)] != before or start < pos:
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
    return [parse_patch(_read(p), p.name) for p in paths]


def patch_set_digest(patches: Iterable[Patch]) -> str:
    digest = hashlib.sha256()
    for patch in patches:
        digest.update(patch.name.encode() + b"\0" + patch.text.encode() + b"\0")
    return digest.hexdigest()


def apply_patch_set(sources: Mapping[str, str], patches: Sequence[Patch],
                    reverse: bool = False) -> Dict[str, str]:
    """Return the patched texts of every file the patches touch (all or an exception)."""
    result = dict(sources)
    for patch in reversed(patches) if reverse else patches:
        for relpath, hunks in patch.files.items():
            if relpath not in result:
                raise PatchError(f"{patch.name}: target {relpath} not found")
            result[relpath] = apply_hunks(result[relpath], hunks, reverse, f"{patch.name}:{relpath}")
    return {path: result[path] for path in targets(patches)}


def targets(patches: Iterable[Patch]) -> List[str]:
    return sorted({path for patch in patches for path in patch.files})


# --------------------------------------------------------------------------------------------
# Trees of files
# --------------------------------------------------------------------------------------------
def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # exact bytes: no newline translation


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pristine_checksums() -> Dict[str, str]:
    """relpath -> sha256 of every file of the pristine solo-learn 1.0.2 wheel."""
    table = {}
    for line in CHECKSUMS.read_text().splitlines():
        if line.strip():
            digest, path = line.split(maxsplit=1)
            table[path] = digest
    return table


def check_pristine(sources: Mapping[str, str], what: str) -> None:
    """Refuse, naming the files, unless every given file equals its pristine 1.0.2 version."""
    expected = pristine_checksums()
    bad = [p for p, text in sources.items() if expected.get(p) != sha256(text.encode("utf-8"))]
    if bad:
        raise PatchError(
            f"{what}: {', '.join(bad)} differ from solo-learn {PRISTINE_VERSION}; nothing was "
            f"changed. Reinstall the original with `pip install --force-reinstall --no-deps "
            f"solo-learn=={PRISTINE_VERSION}` and run this again."
        )


def file_states(sources: Mapping[str, str], patches: Sequence[Patch]) -> Dict[str, str]:
    """relpath -> ``pristine``, ``patched`` (by exactly these patches) or ``modified``."""
    expected = pristine_checksums()
    states = {}
    for path, text in sources.items():
        if expected.get(path) == sha256(text.encode("utf-8")):
            states[path] = "pristine"
            continue
        try:
            for patch in reversed([p for p in patches if path in p.files]):
                text = apply_hunks(text, patch.files[path], reverse=True, where=path)
            states[path] = "patched" if expected.get(path) == sha256(text.encode("utf-8")) else "modified"
        except PatchError:
            states[path] = "modified"
    return states


def tree_state(root: Path, patches: Sequence[Patch]) -> str:
    """``pristine``, ``patched`` (with exactly these patches) or ``modified``."""
    sources = {p: _read(root / p) for p in targets(patches) if (root / p).is_file()}
    if len(sources) < len(targets(patches)):
        return "modified"
    states = set(file_states(sources, patches).values())
    return states.pop() if len(states) == 1 else "modified"


def patch_tree(root: Path, patches: Sequence[Patch]) -> bool:
    """Patch the files under ``root`` in place; all or nothing. Returns False if already done."""
    missing = [p for p in targets(patches) if not (root / p).is_file()]
    if missing:
        raise PatchError(f"{root}: {', '.join(missing)} missing; nothing was changed.")
    sources = {p: _read(root / p) for p in targets(patches)}
    states = file_states(sources, patches)
    if set(states.values()) == {"patched"}:
        return False
    odd = [f"{path} ({state})" for path, state in states.items() if state != "pristine"]
    if odd:
        raise PatchError(f"{root}: {', '.join(odd)}: not the pristine solo-learn "
                         f"{PRISTINE_VERSION}; nothing was changed.")
    patched = apply_patch_set(sources, patches)
    for path, text in patched.items():
        (root / path).write_bytes(text.encode("utf-8"))
    return True


def pristine_source(relpath: str) -> str:
    """The pristine 1.0.2 text of an installed, patched solo-learn file (e.g. for tests)."""
    dist = metadata.distribution("solo-learn")
    root = Path(dist.locate_file(""))
    patches = recorded_patches(dist) or load_patches()
    involved = [p for p in patches if relpath in p.files]
    text = _read(root / relpath)
    for patch in reversed(involved):
        text = apply_hunks(text, patch.files[relpath], reverse=True, where=f"{patch.name}:{relpath}")
    return text


# --------------------------------------------------------------------------------------------
# The installed distribution
# --------------------------------------------------------------------------------------------
def recorded_patches(dist: metadata.Distribution) -> Optional[List[Patch]]:
    """The patches a patched install recorded in its dist-info, or None."""
    record = dist.read_text(RECORD_NAME)
    if record is None:
        return None
    return [parse_patch(dist.read_text(f"iclmsr_patches/{entry['name']}") or "", entry["name"])
            for entry in json.loads(record)["patches"]]


def installed_files(dist: metadata.Distribution) -> Dict[str, bytes]:
    """relpath -> bytes of the package files (dist-info and byte code excluded)."""
    files = {}
    for item in dist.files or []:
        path = str(item).replace("\\", "/")
        if ".dist-info/" in path or "__pycache__" in path or path.endswith(".pyc"):
            continue
        files[path] = Path(dist.locate_file(item)).read_bytes()
    return files


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(files: Mapping[str, bytes], original_metadata: str, license_text: Optional[str],
                patches: Sequence[Patch], out_dir: Path) -> Path:
    """Write ``solo_learn-1.0.2+iclmsr-py3-none-any.whl`` and return its path."""
    info = f"solo_learn-{PATCHED_VERSION}.dist-info"
    meta_lines = []
    for line in original_metadata.splitlines():
        if line.startswith("Requires-Dist:") or line.startswith("Provides-Extra:"):
            continue
        if line.startswith("Version:"):
            line = f"Version: {PATCHED_VERSION}"
        meta_lines.append(line)
    # Header fields end at the first empty line; insert the honest requirements there.
    cut = meta_lines.index("") if "" in meta_lines else len(meta_lines)
    extras = sorted({r.split("extra == '")[1].rstrip("'") for r in REQUIRES if "extra ==" in r})
    meta_lines[cut:cut] = [f"Requires-Dist: {r}" for r in REQUIRES] + [f"Provides-Extra: {e}" for e in extras]
    record = {
        "base_version": PRISTINE_VERSION,
        "patch_set": patch_set_digest(patches),
        "patches": [{"name": p.name, "sha256": sha256(p.text.encode()),
                     "files": sorted(p.files)} for p in patches],
        "files": {path: {"pristine": pristine_checksums().get(path), "patched": sha256(files[path])}
                  for path in targets(patches)},
    }
    contents: Dict[str, bytes] = dict(files)
    contents[f"{info}/METADATA"] = ("\n".join(meta_lines) + "\n").encode()
    contents[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: solo-iclmsr patches/solo_patch.py\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n").encode()
    tops = sorted({path.split("/")[0] for path in files if "/" in path})
    contents[f"{info}/top_level.txt"] = ("\n".join(tops) + "\n").encode()
    if license_text is not None:
        contents[f"{info}/LICENSE"] = license_text.encode()
    contents[f"{info}/{RECORD_NAME}"] = (json.dumps(record, indent=2) + "\n").encode()
    for patch in patches:
        contents[f"{info}/iclmsr_patches/{patch.name}"] = patch.text.encode()
    wheel = out_dir / f"solo_learn-{PATCHED_VERSION}-py3-none-any.whl"
    lines = [_record_line(path, data) for path, data in sorted(contents.items())]
    lines.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(lines) + "\n").encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in sorted(contents.items()):
            archive.writestr(path, data)
    return wheel


def installed_state(patches: Sequence[Patch]) -> Tuple[str, Optional[metadata.Distribution]]:
    """``absent``, ``pristine``, ``patched``, ``outdated`` (other patches) or ``modified``."""
    try:
        dist = metadata.distribution("solo-learn")
    except metadata.PackageNotFoundError:
        return "absent", None
    root = Path(dist.locate_file(""))
    if dist.version == PRISTINE_VERSION:
        return tree_state(root, patches), dist
    if dist.version != PATCHED_VERSION:
        return f"unsupported version {dist.version}", dist
    recorded = recorded_patches(dist)
    if recorded is None:
        return "modified", dist
    if patch_set_digest(recorded) == patch_set_digest(patches) and tree_state(root, patches) == "patched":
        return "patched", dist
    return ("outdated" if tree_state(root, recorded) == "patched" else "modified"), dist


def ensure_patched(patches: Sequence[Patch], install_if_absent: bool = False) -> str:
    """The patch step. Returns a one-line account of what it did."""
    state, dist = installed_state(patches)
    if state == "absent" and install_if_absent:
        _pip("install", "--no-deps", f"solo-learn=={PRISTINE_VERSION}")
        importlib.invalidate_caches()
        state, dist = installed_state(patches)
    if state == "patched":
        return f"solo-learn {PATCHED_VERSION} already carries these {len(patches)} patches: nothing to do."
    if state == "absent":
        raise PatchError(f"solo-learn is not installed: run `pip install --no-deps "
                         f"solo-learn=={PRISTINE_VERSION}`, then this again (or pass --install).")
    if state.startswith("unsupported"):
        raise PatchError(f"solo-learn {dist.version} is installed; these patches are for "
                         f"{PRISTINE_VERSION} only. Run `pip install --force-reinstall --no-deps "
                         f"solo-learn=={PRISTINE_VERSION}`, then this again.")
    files = installed_files(dist)
    # Reconstruct the pristine sources: as installed, or reverting the patches it recorded.
    base = (recorded_patches(dist) or []) if dist.version == PATCHED_VERSION else []
    wanted = targets(list(base) + list(patches))
    missing = [p for p in wanted if p not in files]
    sources = {p: files[p].decode("utf-8") for p in wanted if p in files}
    states = file_states(sources, base)
    odd = [p for p, s in states.items() if s == "modified" or (s == "pristine" and p in targets(base))]
    if missing or odd:
        raise PatchError(
            f"installed solo-learn: {', '.join(missing + odd)} "
            f"{'missing or ' if missing else ''}changed by hand; nothing was changed. Reinstall "
            f"the original with `pip install --force-reinstall --no-deps solo-learn=="
            f"{PRISTINE_VERSION}` and run this again.")
    sources.update(apply_patch_set(sources, base, reverse=True) if base else {})
    patched = apply_patch_set(sources, patches)
    files.update({path: text.encode() for path, text in sources.items()})
    files.update({path: text.encode() for path, text in patched.items()})
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(files, dist.read_text("METADATA") or "", dist.read_text("LICENSE"),
                            patches, Path(tmp))
        _pip("install", "--no-deps", "--force-reinstall", "--no-index", str(wheel))
    return (f"solo-learn {PRISTINE_VERSION} patched with {len(patches)} patches "
            f"({', '.join(p.name for p in patches)}) and reinstalled as {PATCHED_VERSION}.")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report the state; change nothing")
    parser.add_argument("--install", action="store_true",
                        help=f"pip install solo-learn=={PRISTINE_VERSION} first if it is absent")
    args = parser.parse_args(argv)
    try:
        patches = load_patches()
        if args.check:
            state, dist = installed_state(patches)
            where = f" at {dist.locate_file('')}" if dist is not None else ""
            print(f"solo-learn: {state}{where} ({len(patches)} patches in {HERE.name}/)")
            return 0 if state == "patched" else 1
        print(ensure_patched(patches, install_if_absent=args.install))
    except PatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
