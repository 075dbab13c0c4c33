#!/usr/bin/env python3
"""Offline schema check of infra/terraform when `terraform validate` cannot download providers.

Every google_* resource and data block is checked against the hashicorp/google provider schema as
published in the prebuilt CDKTF bindings (@cdktf/provider-google 16.12.1 = google provider 6.50.0,
inside the `~> 6.20` pin): unknown arguments or blocks, attributes written as blocks, and missing
required arguments, and every `google_x.name.attr` reference names an attribute the resource
exports. It does not check types or expressions: `terraform validate` stays the real
gate wherever the registry is reachable.

Usage: tf-schema-check.py <terraform dir> <path to the package's .jsii>
Needs python-hcl2 (pip install python-hcl2) and the package
(npm pack @cdktf/provider-google@16.12.1 && tar -xzf cdktf-provider-google-16.12.1.tgz package/.jsii).
"""
import glob, json, re, sys
import hcl2

META = {"for_each", "count", "depends_on", "lifecycle", "provider"}
errors = []


def camel(s):
    p = s.split("_")
    return p[0] + "".join(x[:1].upper() + x[1:] for x in p[1:])


def pascal(s):
    return "".join(x[:1].upper() + x[1:] for x in s.split("_"))


def unquote(s):
    return s.strip('"')


def props(types, fqn):
    """Properties of a jsii struct, inherited ones included."""
    t = types[fqn]
    out = {}
    for base in t.get("interfaces", []):
        if base in types:
            out.update(props(types, base))
    for p in t.get("properties", []):
        out[p["name"]] = p
    return out


def block_struct(types, ty):
    """The struct a block property holds (None: a plain attribute)."""
    if "fqn" in ty:
        return ty["fqn"]
    if "collection" in ty:
        return block_struct(types, ty["collection"]["elementtype"])
    if "union" in ty:
        for u in ty["union"]["types"]:
            f = block_struct(types, u)
            if f in types and types[f].get("kind") == "interface" and "properties" in types[f]:
                return f
    return None


def check_body(types, body, fqn, where, top=False):
    ps = props(types, fqn)
    present = set()
    for key, val in body.items():
        if key in ("__is_block__", "__comments__") or (top and key in META):
            continue
        if key == "dynamic":
            for dyn in val:
                for name, spec in dyn.items():
                    name = unquote(name)
                    present.add(camel(name))
                    contents = [c | {"__is_block__": True} for c in spec.get("content", [])]
                    check_block(types, name, contents, ps, where)
            continue
        present.add(camel(key))
        if camel(key) not in ps:
            errors.append(f"{where}: unknown argument or block '{key}'")
        elif isinstance(val, list) and val and isinstance(val[0], dict) and val[0].get("__is_block__"):
            check_block(types, key, val, ps, where)
    for name, p in ps.items():
        if not p.get("optional") and name not in present:
            errors.append(f"{where}: missing required '{name}'")


def check_block(types, name, blocks, ps, where):
    p = ps.get(camel(name))
    if p is None:
        errors.append(f"{where}: unknown block '{name}'")
        return
    struct = block_struct(types, p["type"])
    if not struct:
        errors.append(f"{where}.{name}: not a block in the schema (write it as an attribute)")
        return
    for b in blocks:
        check_body(types, b, struct, f"{where}.{name}")


REFERENCE = re.compile(r"\b(data\.)?(google_[a-z0-9_]+)\.([a-z0-9_]+)(\[[^\]]*\])?\.([a-z_]+)")


def class_props(types, fqn):
    t = types.get(fqn, {})
    out = class_props(types, t["base"]) if "base" in t else set()
    return out | {p["name"] for p in t.get("properties", [])}


def check_references(types, path, text):
    """`google_x.name[...].attr` must name an attribute the resource (or data source) exports."""
    for m in REFERENCE.finditer(text):
        is_data, rtype, _, _, attr = m.groups()
        short = rtype[len("google_"):]
        if is_data:
            fqn = f"@cdktf/provider-google.dataGoogle{pascal(short)}.DataGoogle{pascal(short)}"
        else:
            fqn = f"@cdktf/provider-google.{camel(short)}.{pascal(short)}"
        if fqn in types and camel(attr) not in class_props(types, fqn):
            errors.append(f"{path.split('/')[-1]}: {m.group(0)}: {rtype} has no attribute '{attr}'")


def main():
    types = json.load(open(sys.argv[2]))["types"]
    for path in sorted(glob.glob(sys.argv[1] + "/*.tf")):
        check_references(types, path, open(path).read())
        doc = hcl2.load(open(path))
        for kind in ("resource", "data"):
            for item in doc.get(kind, []):
                for rtype, named in item.items():
                    rtype = unquote(rtype)
                    if not rtype.startswith("google_"):
                        continue  # random_* and others are not in this schema
                    short = rtype[len("google_"):]
                    module, cls = camel(short), pascal(short)
                    if kind == "data":
                        module, cls = "dataGoogle" + cls, "DataGoogle" + cls
                    fqn = f"@cdktf/provider-google.{module}.{cls}Config"
                    for rname, body in named.items():
                        where = f"{path.split('/')[-1]}: {rtype}.{unquote(rname)}"
                        if fqn not in types:
                            errors.append(f"{where}: resource type not in the provider")
                        else:
                            check_body(types, body, fqn, where, top=True)
    if errors:
        print("\n".join(errors))
        return 1
    print("schema check: every google_* block and reference matches the provider schema")
    return 0


if __name__ == "__main__":
    sys.exit(main())
