"""Scenarios: names, overwrite, CREATE_PATH and symlinks (PROTOCOL.md 5.2, section 8)."""

from __future__ import annotations

import os
from pathlib import Path

from gsi.constants import W_MAX_PATH, Status
from gsi.names import encode_name

from .model import FsExpect, Scenario, both, gsi_only
from .steps import (
    CREATE,
    FORCE,
    NONE,
    NameField,
    cancel,
    complete,
    copy,
    data,
    dir_field,
    negotiate,
    start,
    start_raw,
    writes,
)

E_FAIL = int(Status.E_FAIL)
INVALIDARG = int(Status.INVALIDARG)
DENIED = int(Status.ACCESS_DENIED)
EXISTS = int(Status.ALREADY_EXISTS)
NOT_FOUND = int(Status.PATH_NOT_FOUND)
LINUX_NAMES = "the Linux daemon does not check names (PROTOCOL.md 5.2)"
LINUX_UNSAFE = "the Linux daemon does not sanitise '..', absolute paths or symlinks " \
               "(PROTOCOL.md 5.2)"
LINUX_SPECIAL = "the Linux daemon opens whatever the target is (PROTOCOL.md 5.2)"
LINUX_TRUNC = "the Linux daemon truncates the old file at START (PROTOCOL.md 5.2)"

OLD = data(500, seed=5)
NEW = data(700, seed=6)
SMALL = data(64, seed=7)
NOTHING = FsExpect()


def _units(text: str) -> bytes:
    return text.encode("utf-16-le")


def _field(raw: bytes) -> bytes:
    return raw.ljust(2 * W_MAX_PATH, b"\x00")


def _file(raw: bytes) -> tuple[NameField, NameField]:
    return (lambda ctx: raw), dir_field


def _path(raw: bytes) -> tuple[NameField, NameField]:
    return (lambda ctx: encode_name("f.bin")), (lambda ctx: raw)


UNICODE = "résumé-日本語-Ωμέγα.txt"
SURROGATES = "emoji-😀-𝄞.bin"
LONG = "x" * 255

NAMES = (
    Scenario(id="names.unicode", title="a non-ASCII name lands as UTF-8",
             steps=(negotiate(), *copy(UNICODE, SMALL)),
             fs=both(FsExpect(files={UNICODE: SMALL})),
             na={"linux": "the current Linux daemon mangles non-ASCII names (DESIGN.md)"},
             rule="5.2"),
    Scenario(id="names.surrogate-pair", title="a name with surrogate pairs (outside the BMP)",
             steps=(negotiate(), *copy(SURROGATES, SMALL)),
             fs=both(FsExpect(files={SURROGATES: SMALL})),
             na={"linux": "the current Linux daemon mangles non-ASCII names (DESIGN.md)"},
             rule="5.2"),
    Scenario(id="names.unpaired-surrogate", title="file_name with an unpaired surrogate",
             steps=(negotiate(), start_raw("START file_name 'bad\\ud800'",
                                           *_file(_field(_units("bad") + b"\x00\xd8")),
                                           expect=INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_NAMES}, rule="section 8"),
    Scenario(id="names.path-unpaired-surrogate", title="path_name with an unpaired low "
             "surrogate", steps=(negotiate(), start_raw(
                 "START path_name '/x\\udc00/'",
                 *_path(_field(_units("/x") + b"\x00\xdc" + _units("/"))), expect=INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_NAMES}, rule="section 8"),
    Scenario(id="names.missing-nul", title="file_name of 260 units without a NUL",
             steps=(negotiate(), start_raw("START file_name 260 x 'a', no NUL",
                                           *_file(_units("a" * 260)), expect=INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_NAMES}, rule="section 8"),
    Scenario(id="names.path-missing-nul", title="path_name of 260 units without a NUL",
             steps=(negotiate(), start_raw("START path_name 260 x 'p', no NUL",
                                           *_path(_units("p" * 260)), expect=INVALIDARG)),
             na={"linux": LINUX_NAMES}, rule="section 8"),
    Scenario(id="names.empty-file-name", title="an empty file_name",
             steps=(negotiate(), start("", 10, CREATE, INVALIDARG)),
             fs=gsi_only(NOTHING), rule="section 8"),
    Scenario(id="names.slash-in-file-name", title="file_name containing '/'",
             steps=(negotiate(), start("a/b", 10, CREATE, INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_NAMES}, rule="section 8"),
    Scenario(id="names.dotdot-escape", title="'..' components that would leave the root: "
             "access denied, nothing written outside", steps=(
                 negotiate(), start_raw("START in DIR/../../../ESCAPE/", expect=DENIED,
                                        file_name=lambda ctx: encode_name("f.bin"),
                                        path_name=lambda ctx: encode_name(
                                            f"{ctx.dir}../../../{ctx.escape}/"))),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNSAFE}, rule="section 8"),
    Scenario(id="names.dotdot-inside", title="a '..' that stays inside the root is refused "
             "too", steps=(negotiate(), start("f.bin", 10, CREATE, DENIED, sub="a/../")),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNSAFE}, rule="section 8"),
    Scenario(id="names.dotdot-file-name", title="file_name '..'",
             steps=(negotiate(), start("..", 10, CREATE, DENIED)),
             na={"linux": LINUX_UNSAFE}, rule="section 8"),
    Scenario(id="names.dot-components", title="'.' and empty components are skipped",
             steps=(negotiate(), *copy("f.bin", SMALL, sub="./a//b/./")),
             fs=both(FsExpect(files={"a/b/f.bin": SMALL})), rule="section 8"),
    Scenario(id="names.long-255", title="a 255-byte file name", steps=(
        negotiate(), *copy(LONG, SMALL)), fs=both(FsExpect(files={LONG: SMALL})), rule="5.2"),
    Scenario(id="names.too-long", title="a 259-unit file name (longer than NAME_MAX)",
             steps=(negotiate(), start("y" * 259, 10, CREATE, INVALIDARG)),
             fs=gsi_only(NOTHING), rule="section 8 (a filesystem error)"),
    Scenario(id="names.long-path", title="a path_name near 259 units",
             steps=(negotiate(), *copy("f.bin", SMALL, sub=f"{'d' * 100}/{'e' * 100}/")),
             fs=both(FsExpect(files={f"{'d' * 100}/{'e' * 100}/f.bin": SMALL})), rule="5.2"),
)

def _fifo_target(where: Path, outside: Path) -> None:
    os.mkfifo(where / "f.bin")


OVERWRITE = (
    Scenario(id="overwrite.exists", title="an existing target without OVER_WRITE: "
             "0x80070050 at START, old file kept", steps=(
                 negotiate(), *copy("f.bin", OLD), start("f.bin", len(NEW), NONE, EXISTS)),
             fs=both(FsExpect(files={"f.bin": OLD})), rule="5.2, section 8"),
    Scenario(id="overwrite.force", title="OVER_WRITE replaces an existing file",
             steps=(negotiate(), *copy("f.bin", OLD), *copy("f.bin", NEW, FORCE)),
             fs=both(FsExpect(files={"f.bin": NEW})), rule="5.2"),
    Scenario(id="overwrite.force-cancelled", title="a cancelled OVER_WRITE copy leaves the "
             "old file untouched", steps=(
                 negotiate(), *copy("f.bin", OLD), start("f.bin", len(NEW), FORCE),
                 writes(NEW[:300], label="WRITE 300 B"), cancel()),
             fs=both(FsExpect(files={"f.bin": OLD})), na={"linux": LINUX_TRUNC},
             rule="DESIGN.md promises"),
    Scenario(id="overwrite.force-incomplete", title="an OVER_WRITE copy refused at COMPLETE "
             "leaves the old file untouched", steps=(
                 negotiate(), *copy("f.bin", OLD), start("f.bin", len(NEW), FORCE),
                 writes(NEW[:300], label="WRITE 300 B"), complete(E_FAIL)),
             fs=both(FsExpect(files={"f.bin": OLD})), na={"linux": LINUX_TRUNC},
             rule="section 8"),
    Scenario(id="overwrite.directory", title="a directory target without OVER_WRITE exists",
             steps=(negotiate(), *copy("x", SMALL, sub="d/"), start("d", 10, NONE, EXISTS)),
             fs=both(FsExpect(files={"d/x": SMALL})), rule="section 8"),
    Scenario(id="overwrite.directory-force", title="a directory target with OVER_WRITE: "
             "access denied", steps=(negotiate(), *copy("x", SMALL, sub="d/"),
                                     start("d", 10, FORCE, DENIED)),
             fs=both(FsExpect(files={"d/x": SMALL})), rule="section 8"),
    Scenario(id="overwrite.fifo", title="a FIFO target exists without OVER_WRITE (never "
             "opened)", steps=(negotiate(), start("f.bin", 10, NONE, EXISTS)),
             setup=_fifo_target, na={"linux": LINUX_SPECIAL}, rule="section 8"),
    Scenario(id="overwrite.fifo-force", title="with OVER_WRITE the commit replaces a "
             "FIFO target", steps=(negotiate(), *copy("f.bin", NEW, FORCE)),
             fs=both(FsExpect(files={"f.bin": NEW})), setup=_fifo_target,
             na={"linux": LINUX_SPECIAL}, rule="section 8"),
)

CREATE_PATH = (
    Scenario(id="create-path.missing-no-flag", title="a missing directory without "
             "CREATE_PATH: path not found", steps=(
                 negotiate(), start("f.bin", 10, NONE, NOT_FOUND, sub="missing/")),
             fs=both(NOTHING), rule="section 8"),
    Scenario(id="create-path.nested", title="CREATE_PATH on a/b/c (no trailing '/'): gsi "
             "creates every component, Linux not the last", steps=(
                 negotiate(), start("f.bin", len(SMALL), CREATE, {"gsi": 0, "linux": E_FAIL},
                                    sub="a/b/c"),
                 writes(SMALL, expect={"gsi": 0, "linux": E_FAIL}),
                 complete({"gsi": 0, "linux": E_FAIL})),
             fs={"gsi": FsExpect(files={"a/b/c/f.bin": SMALL}),
                 "linux": FsExpect(dirs=("a/b",))}, rule="5.2, DESIGN.md"),
    Scenario(id="create-path.trailing-slash", title="CREATE_PATH on a/b/c/ creates every "
             "component", steps=(negotiate(), *copy("f.bin", SMALL, sub="a/b/c/")),
             fs=both(FsExpect(files={"a/b/c/f.bin": SMALL})), rule="5.2"),
    Scenario(id="create-path.existing-no-flag", title="an existing directory needs no "
             "CREATE_PATH", steps=(negotiate(), *copy("a.bin", SMALL, sub="x/"),
                                   *copy("b.bin", OLD, NONE, sub="x/")),
             fs=both(FsExpect(files={"x/a.bin": SMALL, "x/b.bin": OLD})), rule="5.2"),
    Scenario(id="create-path.file-on-the-way", title="a file where a directory should be",
             steps=(negotiate(), *copy("x", SMALL),
                    start("f.bin", 10, CREATE, NOT_FOUND, sub="x/")),
             fs=both(FsExpect(files={"x": SMALL})), rule="section 8"),
)


def _inside_link(where: Path, outside: Path) -> None:
    (where / "real").mkdir()
    os.symlink("real", where / "link")


def _outside_link(where: Path, outside: Path) -> None:
    os.symlink(outside, where / "out")


def _target_link(where: Path, outside: Path) -> None:
    (outside / "victim").write_bytes(OLD)
    os.symlink(outside / "victim", where / "f.bin")


SYMLINKS = (
    Scenario(id="symlink.inside-root", title="a symlink on the way that stays inside the "
             "root is followed", steps=(negotiate(), *copy("f.bin", SMALL, NONE, sub="link/")),
             fs=both(FsExpect(files={"real/f.bin": SMALL}, dirs=("link",))),
             setup=_inside_link, na={"linux": LINUX_UNSAFE}, rule="section 8"),
    Scenario(id="symlink.outside-root", title="a symlink on the way that leaves the root: "
             "access denied", steps=(negotiate(), start("f.bin", 10, NONE, DENIED,
                                                        sub="out/")),
             fs=both(FsExpect(dirs=("out",))), setup=_outside_link,
             na={"linux": LINUX_UNSAFE}, rule="section 8"),
    Scenario(id="symlink.target", title="the target is a symlink: it exists without "
             "OVER_WRITE", steps=(negotiate(), start("f.bin", 10, NONE, EXISTS)),
             setup=_target_link, na={"linux": LINUX_UNSAFE}, rule="section 8"),
    Scenario(id="symlink.target-force", title="with OVER_WRITE the commit replaces the "
             "symlink itself, never writing through it", steps=(
                 negotiate(), *copy("f.bin", NEW, FORCE)),
             fs=both(FsExpect(files={"f.bin": NEW})), setup=_target_link,
             na={"linux": LINUX_UNSAFE}, rule="section 8"),
)
