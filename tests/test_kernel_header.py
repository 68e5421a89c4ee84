"""Cross-check gsi's layouts and constants against the kernel's <linux/hyperv.h>.

A small C program is compiled against the installed UAPI header and prints
``sizeof``/``offsetof`` of the fcopy structs and the values of the fcopy constants;
the construct declarations in :mod:`gsi.layouts` and :mod:`gsi.constants` must agree.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gsi import constants, layouts

HEADER = Path("/usr/include/linux/hyperv.h")

STRUCT_FIELDS: dict[str, tuple[str, ...]] = {
    "hv_fcopy_hdr": ("operation", "service_id0", "service_id1"),
    "hv_start_fcopy": ("hdr", "file_name", "path_name", "copy_flags", "file_size"),
    "hv_do_fcopy": ("hdr", "pad", "offset", "size", "data"),
}
MACROS = ("W_MAX_PATH", "DATA_FRAGMENT", "OVER_WRITE", "CREATE_PATH")
ENUM_OPS = ("START_FILE_COPY", "WRITE_TO_FILE", "COMPLETE_FCOPY", "CANCEL_FCOPY")


def _program(with_enum: bool) -> str:
    lines = [
        "#include <linux/types.h>",
        "#include <linux/hyperv.h>",
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#define FIELD_SIZE(s, f) sizeof(((struct s *)0)->f)",
        "int main(void) {",
    ]
    for struct_name, fields in STRUCT_FIELDS.items():
        lines.append(f'  printf("sizeof {struct_name} %zu\\n", sizeof(struct {struct_name}));')
        for f in fields:
            lines.append(f'  printf("offsetof {struct_name}.{f} %zu\\n", '
                         f"offsetof(struct {struct_name}, {f}));")
            lines.append(f'  printf("fieldsize {struct_name}.{f} %zu\\n", '
                         f"FIELD_SIZE({struct_name}, {f}));")
    for macro in MACROS:
        lines.append(f'  printf("macro {macro} %lld\\n", (long long)({macro}));')
    if with_enum:
        for op in ENUM_OPS:
            lines.append(f'  printf("enum {op} %lld\\n", (long long)({op}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compile against <linux/hyperv.h>")
    if not HEADER.is_file():
        pytest.skip(f"{HEADER} is missing (install linux-libc-dev)")
    with_enum = "enum hv_fcopy_op" in HEADER.read_text(errors="replace")
    tmp = tmp_path_factory.mktemp("kernel_header")
    source = tmp / "fcopy_layout.c"
    binary = tmp / "fcopy_layout"
    source.write_text(_program(with_enum))
    subprocess.run([gcc, "-std=gnu11", "-Wall", "-o", str(binary), str(source)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    values: dict[str, int] = {}
    for line in out.splitlines():
        kind, name, value = line.split()
        values[f"{kind} {name}"] = int(value)
    values["has enum"] = int(with_enum)
    return values


def _construct_fields(struct: Any) -> dict[str, tuple[int, int]]:
    """(offset, size) of every named subcon of a fixed-size construct Struct."""
    out: dict[str, tuple[int, int]] = {}
    offset = 0
    for sub in struct.subcons:
        size = sub.sizeof()
        out[sub.name] = (offset, size)
        offset += size
    return out


CONSTRUCTS = {
    "hv_fcopy_hdr": layouts.hv_fcopy_hdr,
    "hv_start_fcopy": layouts.hv_start_fcopy,
    "hv_do_fcopy": layouts.hv_do_fcopy,
}


@pytest.mark.parametrize("struct_name", sorted(STRUCT_FIELDS))
def test_struct_size(kernel: dict[str, int], struct_name: str) -> None:
    assert CONSTRUCTS[struct_name].sizeof() == kernel[f"sizeof {struct_name}"]


@pytest.mark.parametrize("struct_name", sorted(STRUCT_FIELDS))
def test_field_offsets_and_sizes(kernel: dict[str, int], struct_name: str) -> None:
    fields = _construct_fields(CONSTRUCTS[struct_name])
    assert tuple(fields) == STRUCT_FIELDS[struct_name]
    for name, (offset, size) in fields.items():
        assert offset == kernel[f"offsetof {struct_name}.{name}"], name
        assert size == kernel[f"fieldsize {struct_name}.{name}"], name


def test_sizes_match_gsi_constants(kernel: dict[str, int]) -> None:
    assert kernel["sizeof hv_fcopy_hdr"] == constants.FCOPY_HDR_SIZE
    assert kernel["sizeof hv_start_fcopy"] == constants.START_BODY_SIZE
    assert kernel["sizeof hv_do_fcopy"] == constants.WRITE_BODY_SIZE
    assert kernel["offsetof hv_do_fcopy.data"] == constants.WRITE_HEADER_SIZE


def test_macros_match_gsi_constants(kernel: dict[str, int]) -> None:
    assert kernel["macro W_MAX_PATH"] == constants.W_MAX_PATH
    assert kernel["macro DATA_FRAGMENT"] == constants.DATA_FRAGMENT
    assert kernel["macro OVER_WRITE"] == constants.CopyFlags.OVER_WRITE
    assert kernel["macro CREATE_PATH"] == constants.CopyFlags.CREATE_PATH


def test_operation_enum_matches(kernel: dict[str, int]) -> None:
    if not kernel["has enum"]:
        pytest.skip(f"{HEADER} does not declare enum hv_fcopy_op")
    for op in ENUM_OPS:
        assert kernel[f"enum {op}"] == constants.Operation[op], op
