#!/usr/bin/env python3
"""Compares the RBAC the chart grants the operator with what it really used.

Usage: hack/rbac-audit.py AUDIT_LOG RENDERED_CHART [NAMESPACE]

AUDIT_LOG is the apiserver's JSON audit log of an integration run
(hack/local-cluster.sh with WAO_CLUSTER_AUDIT_LOG); RENDERED_CHART is
`helm template` output. Every (apiGroup, resource, subresource, verb) that the
chart grants a ServiceAccount of NAMESPACE (default whatsapp-operator-system)
must appear in a request those ServiceAccounts made, unless ALLOWED_UNUSED
below names it with a reason; any 403 answered to them fails too, except a
write into a namespace that is being deleted (NamespaceLifecycle admission).

A server-side apply that creates its object is a `patch` request that the
apiserver also authorizes as `create`: a `patch` answered 201 counts as both.
"""
import json
import sys

import yaml

# Granted but never requested by the suite, each needed on a path it cannot see.
ALLOWED_UNUSED = {
    ("whatsapp.operators.dev", "whatsappnumbers", "finalizers", "update"): (
        "no request uses it: the OwnerReferencesPermissionEnforcement admission "
        "plugin (on in the local control plane) checks it whenever a child with a "
        "blockOwnerDeletion owner reference is written"
    ),
}


def granted(rendered, namespace):
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    roles = {}
    for d in docs:
        if d.get("kind") in ("Role", "ClusterRole"):
            roles[(d["kind"], d["metadata"]["name"])] = d.get("rules") or []
    tuples = {}
    for d in docs:
        if d.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = d.get("subjects") or []
        if not any(s.get("kind") == "ServiceAccount" and s.get("namespace") == namespace for s in subjects):
            continue
        ref = d["roleRef"]
        for rule in roles.get((ref["kind"], ref["name"]), []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        if "*" in (group, resource, verb):
                            sys.exit(f"wildcard in {ref['kind']} {ref['name']}: {rule}")
                        res, _, sub = resource.partition("/")
                        tuples.setdefault((group, res, sub, verb), ref["name"])
    return tuples


def used(audit_log, namespace):
    prefix = f"system:serviceaccount:{namespace}:"
    seen, forbidden, terminating = {}, [], [0]
    with open(audit_log) as f:
        for line in f:
            event = json.loads(line)
            user = event.get("user", {}).get("username", "")
            ref = event.get("objectRef")
            if not user.startswith(prefix) or not ref or event.get("stage") == "RequestReceived":
                continue
            key = (ref.get("apiGroup", ""), ref.get("resource", ""), ref.get("subresource", ""), event["verb"])
            status = event.get("responseStatus", {})
            code = status.get("code")
            causes = [c.get("reason") for c in (status.get("details") or {}).get("causes", [])]
            if code == 403 and causes == ["NamespaceTerminating"]:
                # A write into a namespace a test is deleting: refused by the
                # NamespaceLifecycle admission plugin, not by RBAC.
                terminating[0] += 1
            elif code == 403:
                forbidden.append((user, key, ref.get("namespace", ""), ref.get("name", ""), status.get("message", "")))
            seen[key] = seen.get(key, 0) + 1
            if event["verb"] == "patch" and code == 201:
                create = key[:3] + ("create",)
                seen[create] = seen.get(create, 0) + 1
    return seen, forbidden, terminating[0]


def show(t):
    group, res, sub, verb = t
    return f"{group or 'core'}/{res}{'/' + sub if sub else ''} {verb}"


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    namespace = sys.argv[3] if len(sys.argv) == 4 else "whatsapp-operator-system"
    with open(sys.argv[2]) as f:
        grants = granted(f.read(), namespace)
    seen, forbidden, terminating = used(sys.argv[1], namespace)
    if not seen:
        sys.exit(f"rbac-audit: no request of a ServiceAccount of {namespace} in {sys.argv[1]}")
    failures = []
    for t in sorted(grants):
        if t in seen:
            print(f"used     {show(t)} ({seen[t]} requests)")
        elif t in ALLOWED_UNUSED:
            print(f"allowed  {show(t)}: {ALLOWED_UNUSED[t]}")
        else:
            failures.append(f"granted by {grants[t]} but never used: {show(t)}")
    for t in sorted(set(ALLOWED_UNUSED) - set(grants)):
        failures.append(f"allow-listed but not granted (stale entry): {show(t)}")
    for t in sorted(set(ALLOWED_UNUSED) & set(seen)):
        failures.append(f"allow-listed but used (drop the entry): {show(t)}")
    for t in sorted(set(seen) - set(grants)):
        print(f"other    {show(t)} ({seen[t]} requests, not granted by the chart)")
    for user, t, ns, name, message in forbidden:
        failures.append(f"403 for {user}: {show(t)} {ns}/{name}: {message}")
    if terminating:
        print(f"ignored  {terminating} writes refused because their namespace was being deleted")
    for f in failures:
        print(f"FAIL     {f}")
    print(f"rbac-audit: {len(grants)} granted tuples, {len(seen)} used, {len(failures)} problems")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
