"""The CCPP metadata of the coupler scheme (coupler/src/colnn_ccpp.meta) against its Fortran
(colnn_ccpp.F90): the same subroutines, arguments in the same order with the same type, kind,
intent, rank and optionality, errmsg/errflg with CCPP's standard names, no dependency on a file
that is not installed. (CCPP's own checker, ccpp-framework's
scripts/fortran_tools/offline_check_fortran_vs_metadata.py, also accepts the pair; it is not
part of this project, so this test is our own reading of the same rules.)"""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "coupler" / "src"


def read_meta(path: Path) -> dict[str, list[dict[str, str]]]:
    """{subroutine: [argument properties, in order]} from the [ccpp-arg-table] sections."""
    tables: dict[str, list[dict[str, str]]] = {}
    current: list[dict[str, str]] | None = None
    arg: dict[str, str] | None = None
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section == "ccpp-arg-table":
                current, arg = None, None
            elif section != "ccpp-table-properties" and current is not None:
                arg = {"name": section}
                current.append(arg)
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if section == "ccpp-table-properties":
            tables.setdefault("__properties__", []).append({key: value})
        elif section == "ccpp-arg-table" and key == "name":
            current = tables.setdefault(value, [])
        elif arg is not None:
            arg[key] = value
    return tables


def read_fortran(path: Path) -> dict[str, list[dict[str, str]]]:
    """{subroutine: [argument declarations, in the order of the argument list]}."""
    text = re.sub(r"&\s*\n\s*&?", " ", path.read_text())
    subs: dict[str, list[dict[str, str]]] = {}
    for m in re.finditer(r"^\s*subroutine\s+(\w+)\s*\(([^)]*)\)(.*?)^\s*end subroutine",
                         text, re.S | re.M | re.I):
        name, args, body = m.group(1).lower(), m.group(2), m.group(3)
        decls: dict[str, dict[str, str]] = {}
        for d in re.finditer(r"^\s*(integer|real|character|logical)\s*(\([^)]*\))?\s*,"
                             r"([^:]*)::\s*(.+)$", body, re.M | re.I):
            ftype, kind, attrs = d.group(1).lower(), (d.group(2) or "").strip("() "), d.group(3)
            for var in re.split(r",\s*(?![^()]*\))", d.group(4).split("!")[0]):
                vm = re.match(r"\s*(\w+)\s*(\(([^)]*)\))?", var)
                decls[vm.group(1).lower()] = {
                    "type": ftype, "kind": kind.replace("kind=", "").replace(" ", ""),
                    "intent": re.search(r"intent\((\w+)\)", attrs, re.I).group(1).lower()
                    if "intent" in attrs.lower() else "",
                    "rank": str(len(vm.group(3).split(",")) if vm.group(3) else 0),
                    "optional": str("optional" in attrs.lower())}
        subs[name] = [dict(decls[a.strip().lower()], name=a.strip().lower())
                      for a in args.split(",") if a.strip()]
    return subs


def test_meta_matches_the_fortran_interface() -> None:
    meta = read_meta(SRC / "colnn_ccpp.meta")
    fortran = read_fortran(SRC / "colnn_ccpp.F90")
    props = {k: v for d in meta.pop("__properties__") for k, v in d.items()}
    assert props["name"] == "colnn_ccpp" and props["type"] == "scheme"
    assert "dependencies" not in props   # the scheme needs only the installed library
    assert sorted(meta) == ["colnn_ccpp_finalize", "colnn_ccpp_init", "colnn_ccpp_run"]
    for sub, args in meta.items():
        code = fortran[sub]
        assert [a["name"] for a in args] == [a["name"] for a in code], sub
        for a, c in zip(args, code):
            where = f"{sub}({a['name']})"
            assert a["type"] == c["type"], where
            assert a["intent"] == c["intent"], where
            dims = a["dimensions"].strip("()").strip()
            assert str(len(dims.split(",")) if dims else 0) == c["rank"], where
            assert a.get("optional", "False") == c["optional"], where
            if a["type"] == "real":
                assert a["kind"] == c["kind"] == "kind_phys", where
            if a["type"] == "character":
                assert a["kind"] == "len=*" and c["kind"] == "len=*", where
        assert args[-2]["standard_name"] == "ccpp_error_message", sub
        assert args[-1]["standard_name"] == "ccpp_error_code", sub
    run = {a["name"]: a for a in meta["colnn_ccpp_run"]}
    assert run["col_start"]["standard_name"] == "horizontal_loop_begin"
    assert run["kstep"]["standard_name"] == "index_of_timestep"
    assert run["inputs"]["dimensions"].startswith("(horizontal_loop_extent,")


def test_the_checker_sees_a_wrong_order(tmp_path: Path) -> None:
    """The comparison above can fail: the metadata with two arguments swapped does not match."""
    text = (SRC / "colnn_ccpp.meta").read_text()
    a, b, c = text.index("[col_start]"), text.index("[kstep]"), text.index("[inputs]")
    swapped = tmp_path / "colnn_ccpp.meta"
    swapped.write_text(text[:a] + text[b:c] + text[a:b] + text[c:])
    meta = read_meta(swapped)
    code = read_fortran(SRC / "colnn_ccpp.F90")
    assert [x["name"] for x in meta["colnn_ccpp_run"]] != \
        [x["name"] for x in code["colnn_ccpp_run"]]
