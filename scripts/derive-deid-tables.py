#!/usr/bin/env python3
"""Derive the DICOM PS3.15 Annex E helper tables in node/data/deid/ from public
machine-readable sources. Python 3 standard library only; nothing is typed by hand.

Usage
-----
    python3 scripts/derive-deid-tables.py \
        --annex-e     /work/shared/deid/annex-e.csv \
        --standard    dicom_standard-0.1.0-py3-none-any.whl \
        --part15-html part15.html \
        --out         node/data/deid

  --annex-e      annex-e.csv (PS3.15 Table E.1-1), copied byte for byte to OUT/annex-e.csv;
                 its rows whose basic_profile is a combined code (X/Z, X/D, Z/D, X/Z/D,
                 X/Z/U*) select the attributes written to iod-types.csv.
  --standard     innolitics/dicom-standard JSON: either a directory holding the files of the
                 repository's standard/ folder, or a zip (the PyPI wheel dicom-standard) holding
                 them under .../standard/. Files read: ciods.json, sops.json,
                 ciod_to_modules.json, module_to_attributes.json, and, when present,
                 macro_to_attributes.json with ciod_to_func_group_macros.json (older name:
                 ciod_to_fg_macros.json).
  --part15-html  the DICOM PS3.15 HTML (dicom.nema.org "part15.html", as kept by
                 innolitics/dicom-standard in dicom_standard/standard/part15.html); its Table
                 E.3.10-1 "Safe Private Attributes" becomes safe-private.csv.
  --out          output directory (created if missing).

How the exact inputs used for the committed files are obtained is in
node/data/deid/SOURCE.md ("Regenerate").

Outputs
-------
  annex-e.csv       copy of --annex-e.
  sop-classes.csv   sop_class_uid,ciod : every SOP class of sops.json with the id of its
                    Composite IOD (the ciodId used in ciod_to_modules.json; sops.json names the
                    IOD, ciods.json maps name -> id). Sorted by UID, numerically per component.
  iod-types.csv     ciod,path,type,module_usage : where an attribute whose Annex E basic action
                    is a combined code occurs in a Composite IOD. path = tags from the dataset
                    root, 8 upper-case hex digits each, joined by '/'. The module id of
                    innolitics' flattened paths ("module-id:00081110:00081150") is dropped.
                    Attributes reached through a Functional Group Macro of a multi-frame IOD
                    (ciod_to_func_group_macros.json) are listed under both
                    52009229 (Shared Functional Groups Sequence) and 52009230 (Per-Frame
                    Functional Groups Sequence), because PS3.3 C.7.6.16 lets a macro sit in
                    either. When a ciod+path is reached from several modules/macros: type = the
                    strongest (1 > 1C > 2 > 2C > 3), module_usage = the strongest usage of the
                    contributing modules/macros (M > C > U). type is the Type inside the module,
                    which only applies when a C or U module is present. Sorted by ciod, path.
  safe-private.csv  creator,group,element,vr,name : Table E.3.10-1 rows; group = 4 upper-case
                    hex digits, element = the 2-hex-digit offset in the private block (xx10 ->
                    10). Text as in the table, whitespace normalised. Sorted by creator, group,
                    element.

The script prints the sha256 of every input it read and the row counts it wrote.
"""

import argparse
import csv
import hashlib
import io
import json
import os
import re
import sys
import zipfile
from html.parser import HTMLParser

TYPE_RANK = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}
USAGE_RANK = {"M": 0, "C": 1, "U": 2}
FG_SEQUENCES = ("52009229", "52009230")  # Shared / Per-Frame Functional Groups Sequence
HEX8 = re.compile(r"^[0-9A-F]{8}$")
PATH_TAG = re.compile(r"^[0-9A-FX]{8}$")  # repeating groups appear as e.g. 60XX0010


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


class StandardSource:
    """innolitics standard/*.json, from a directory or from a zip such as the PyPI wheel."""

    def __init__(self, path):
        self.path = path
        self.zip = None
        self.members = {}
        if os.path.isdir(path):
            for name in os.listdir(path):
                self.members[name] = os.path.join(path, name)
        elif zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
            for name in self.zip.namelist():
                parts = name.split("/")
                if len(parts) >= 2 and parts[-2] == "standard" and parts[-1].endswith(".json"):
                    self.members[parts[-1]] = name
        else:
            sys.exit("--standard: %s is neither a directory nor a zip file" % path)

    def has(self, name):
        return name in self.members

    def load(self, name):
        if name not in self.members:
            sys.exit("--standard: %s has no %s" % (self.path, name))
        if self.zip is not None:
            data = self.zip.read(self.members[name])
        else:
            with open(self.members[name], "rb") as fh:
                data = fh.read()
        print("input %s sha256=%s (%d bytes)" % (name, sha256_bytes(data), len(data)), file=sys.stderr)
        return json.loads(data.decode("utf-8"))


def tag_of(annex_tag):
    """'(0008,0080)' -> '00080080'; None for wildcard rows such as '(50xx,xxxx)'."""
    t = annex_tag.strip().strip("()").replace(",", "").upper()
    return t if HEX8.match(t) else None


def read_combined_tags(annex_path):
    with open(annex_path, "rb") as fh:
        data = fh.read()
    print("input %s sha256=%s" % (os.path.basename(annex_path), sha256_bytes(data)), file=sys.stderr)
    combined = {}
    for row in csv.DictReader(io.StringIO(data.decode("utf-8"))):
        if "/" in row["basic_profile"]:
            tag = tag_of(row["tag"])
            if tag is None:
                sys.exit("combined-code row with a non-numeric tag: %r" % row["tag"])
            combined[tag] = row
    return combined


def flat_path(innolitics_path):
    """'module-id:00081110:00081150' -> '00081110/00081150'."""
    parts = innolitics_path.split(":")[1:]
    tags = [p.upper() for p in parts]
    for t in tags:
        if not PATH_TAG.match(t):
            sys.exit("unexpected path component %r in %r" % (t, innolitics_path))
    return "/".join(tags)


def uid_key(uid):
    return [int(c) for c in uid.split(".")]


def derive_sop_classes(std):
    ciods = std.load("ciods.json")
    sops = std.load("sops.json")
    by_name = {c["name"]: c["id"] for c in ciods}
    rows = []
    for sop in sops:
        if sop["ciod"] not in by_name:
            sys.exit("SOP class %s names an unknown CIOD %r" % (sop["id"], sop["ciod"]))
        rows.append((sop["id"], by_name[sop["ciod"]]))
    rows.sort(key=lambda r: uid_key(r[0]))
    without_sop = sorted(set(by_name.values()) - {r[1] for r in rows})
    return rows, without_sop


def merge(table, key, typ, usage):
    if typ not in TYPE_RANK:
        return False
    old = table.get(key)
    if old is None:
        table[key] = (typ, usage)
    else:
        t = typ if TYPE_RANK[typ] < TYPE_RANK[old[0]] else old[0]
        u = usage if USAGE_RANK[usage] < USAGE_RANK[old[1]] else old[1]
        table[key] = (t, u)
    return True


def derive_iod_types(std, combined):
    ciod_to_modules = std.load("ciod_to_modules.json")
    module_attrs = {}
    for a in std.load("module_to_attributes.json"):
        module_attrs.setdefault(a["moduleId"], []).append(a)

    fg_links, macro_attrs = [], {}
    fg_name = next((n for n in ("ciod_to_func_group_macros.json", "ciod_to_fg_macros.json") if std.has(n)), None)
    if fg_name and std.has("macro_to_attributes.json"):
        fg_links = std.load(fg_name)
        for a in std.load("macro_to_attributes.json"):
            macro_attrs.setdefault(a["macroId"], []).append(a)
    else:
        print("note: no functional group macro files; 5200,9229/9230 paths not derived", file=sys.stderr)

    table, skipped = {}, []
    for link in ciod_to_modules:
        usage = link["usage"]
        if usage not in USAGE_RANK:
            sys.exit("unexpected module usage %r" % usage)
        for a in module_attrs.get(link["moduleId"], []):
            path = flat_path(a["path"])
            if path.split("/")[-1] in combined:
                if not merge(table, (link["ciodId"], path), a["type"], usage):
                    skipped.append((link["ciodId"], link["moduleId"], path, a["type"]))
    for link in fg_links:
        usage = link["usage"]
        if usage not in USAGE_RANK:
            sys.exit("unexpected macro usage %r" % usage)
        for a in macro_attrs.get(link["macroId"], []):
            path = flat_path(a["path"])
            if path.split("/")[-1] in combined:
                for seq in FG_SEQUENCES:
                    if not merge(table, (link["ciodId"], seq + "/" + path), a["type"], usage):
                        skipped.append((link["ciodId"], link["macroId"], seq + "/" + path, a["type"]))
    rows = sorted((c, p, t, u) for (c, p), (t, u) in table.items())
    return rows, skipped


class TableE3101(HTMLParser):
    """Collects the cell texts of the table that follows the anchor id="table_E.3.10-1"."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.armed = False
        self.depth = 0
        self.rows = []
        self.row = None
        self.cell = None
        self.done = False

    def handle_starttag(self, tag, attrs):
        if self.done:
            return
        if tag == "a" and dict(attrs).get("id") == "table_E.3.10-1":
            self.armed = True
        elif self.armed and tag == "table":
            self.depth += 1
        elif self.depth and tag == "tr":
            self.row = []
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if self.done or not self.depth:
            return
        if tag in ("td", "th") and self.cell is not None:
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.rows.append(self.row)
            self.row = None
        elif tag == "table":
            self.depth -= 1
            if not self.depth:
                self.done = True

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def derive_safe_private(html_path):
    with open(html_path, "rb") as fh:
        data = fh.read()
    print("input %s sha256=%s" % (os.path.basename(html_path), sha256_bytes(data)), file=sys.stderr)
    p = TableE3101()
    p.feed(data.decode("utf-8"))
    if not p.rows:
        sys.exit("Table E.3.10-1 not found in %s" % html_path)
    header = [h.lower() for h in p.rows[0]]
    if header != ["data element", "private creator", "vr", "vm", "meaning"]:
        sys.exit("unexpected Table E.3.10-1 header %r" % p.rows[0])
    out = []
    for r in p.rows[1:]:
        m = re.match(r"^\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)$", r[0])
        if not m or len(r) != 5:
            sys.exit("unexpected Table E.3.10-1 row %r" % r)
        out.append((r[1], m.group(1).upper(), m.group(2).upper(), r[2], r[4]))
    if len(set(out)) != len(out):
        sys.exit("duplicate rows in Table E.3.10-1")
    out.sort(key=lambda r: (r[0], r[1], r[2]))
    return out


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    print("wrote %s (%d rows)" % (path, len(rows)), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annex-e", required=True)
    ap.add_argument("--standard", required=True)
    ap.add_argument("--part15-html", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    combined = read_combined_tags(args.annex_e)
    dest = os.path.join(args.out, "annex-e.csv")
    if os.path.abspath(dest) != os.path.abspath(args.annex_e):
        with open(args.annex_e, "rb") as src, open(dest, "wb") as dst:
            dst.write(src.read())
    print("copied annex-e.csv; %d combined-code tags" % len(combined), file=sys.stderr)

    std = StandardSource(args.standard)
    sop_rows, without_sop = derive_sop_classes(std)
    write_csv(os.path.join(args.out, "sop-classes.csv"), ["sop_class_uid", "ciod"], sop_rows)
    print("CIODs with no SOP class in sops.json: %s" % ", ".join(without_sop), file=sys.stderr)

    iod_rows, skipped = derive_iod_types(std, combined)
    write_csv(os.path.join(args.out, "iod-types.csv"), ["ciod", "path", "type", "module_usage"], iod_rows)
    for s in skipped:
        print("skipped (type %r not 1/1C/2/2C/3): ciod=%s module=%s path=%s" % (s[3], s[0], s[1], s[2]), file=sys.stderr)
    top = {p for _, p, _, _ in iod_rows if "/" not in p}
    anywhere = {p.split("/")[-1] for _, p, _, _ in iod_rows}
    print("combined-code tags at top level in >=1 IOD: %d; anywhere: %d; of %d"
          % (len(top), len(anywhere), len(combined)), file=sys.stderr)
    for t in sorted(set(combined) - top):
        where = "nested only" if t in anywhere else "in no IOD"
        print("  %s %s (%s): %s" % (t, combined[t]["keyword"], combined[t]["basic_profile"], where), file=sys.stderr)

    sp_rows = derive_safe_private(args.part15_html)
    write_csv(os.path.join(args.out, "safe-private.csv"), ["creator", "group", "element", "vr", "name"], sp_rows)


if __name__ == "__main__":
    main()
