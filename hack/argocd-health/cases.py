#!/usr/bin/env python3
"""Turns an Argo CD health_test.yaml and the fixtures it names into one Lua
chunk that returns the test cases, so a plain Lua interpreter (no YAML or JSON
library) can run them. Usage: cases.py DIR/health_test.yaml > cases.lua"""

import datetime
import os
import sys

import yaml


def lua(value, indent=""):
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        value = value.isoformat()
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in '\\"':
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ord(ch) < 32:
                out.append("\\%03d" % ord(ch))
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    inner = indent + "  "
    if isinstance(value, list):
        items = [inner + lua(v, inner) for v in value]
    elif isinstance(value, dict):
        items = ["%s[%s] = %s" % (inner, lua(str(k)), lua(v, inner)) for k, v in value.items() if v is not None]
    else:
        raise TypeError("cannot express %r in Lua" % (value,))
    if not items:
        return "{}"
    return "{\n" + ",\n".join(items) + "\n" + indent + "}"


def main(path):
    base = os.path.dirname(path)
    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    cases = []
    for test in spec["tests"]:
        with open(os.path.join(base, test["inputPath"]), encoding="utf-8") as f:
            obj = yaml.safe_load(f)
        cases.append({"inputPath": test["inputPath"], "expected": test["healthStatus"], "obj": obj})
    sys.stdout.write("return " + lua(cases) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: cases.py health_test.yaml")
    main(sys.argv[1])
