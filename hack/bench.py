#!/usr/bin/env python3
"""Parsing helpers of hack/bench.sh: numbers, workloads, the audit log.

  bench.py numbers N NAMESPACE                 the WhatsAppNumbers and their Secrets (YAML)
  bench.py rbac                                stdin: `helm template`; prints the ServiceAccount and RBAC
  bench.py service-account                     stdin: that RBAC; prints the ServiceAccount's name
  bench.py ready N GENERATION_MIN < wans.json  how many numbers are Ready for their generation
  bench.py latency T0 < wans.json              "p50 p99 last": create->Ready seconds
  bench.py first-status LOG USER < wans.json   "p50 p99 max missing": create->first status write seconds
  bench.py workloads < list.json               "ready total": StatefulSets, Deployments, Jobs done
  bench.py audit LOG USER START END            JSON: the user's requests in [START, END) (epoch seconds)
  bench.py split FILE PARTS PREFIX             splits a multi-document YAML file into PARTS files
"""
import datetime
import json
import math
import sys

import yaml

# The leader election Lease (--lease-name); the per-number claim Leases count
# as the number's own writes.
LEADER_LEASE = "whatsapp-operator"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def numbers(n, namespace):
    """N numbers shaped like examples/ha-mysql.yaml (2 masters, 1 shard and 1
    standby coreapp, 2 webapps, a media claim), health polling off."""
    docs = []
    for i in range(1, n + 1):
        name = f"wan-{i:04d}"
        docs.append({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"{name}-db", "namespace": namespace},
            "type": "Opaque",
            "stringData": {"username": "whatsapp", "password": "change-me-Secret1!"},
        })
        docs.append({
            "apiVersion": "whatsapp.operators.dev/v1alpha1", "kind": "WhatsAppNumber",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "phoneNumber": f"+1555{i:07d}",
                "version": "2.53.2",
                "multiconnect": {"shards": 1, "standbyCoreapps": 1, "masters": 2},
                "webapp": {"replicas": 2},
                "database": {"engine": "MySQL", "host": "mysql.databases.svc",
                             "credentialsSecretRef": {"name": f"{name}-db"}},
                "media": {"size": "1Gi", "reclaimPolicy": "Delete"},
                "health": {"enabled": False},
            },
        })
    return docs


def rbac(text):
    keep = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    return [d for d in yaml.safe_load_all(text) if d and d.get("kind") in keep]


def ts(value):
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def ready_condition(wan):
    """The Ready=True condition computed for the object's current generation."""
    generation = wan["metadata"].get("generation")
    status = wan.get("status") or {}
    if status.get("observedGeneration") != generation:
        return None
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True" and c.get("observedGeneration") == generation:
            return c
    return None


def percentile(values, p):
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def workload_done(obj):
    kind, spec, status = obj["kind"], obj.get("spec") or {}, obj.get("status") or {}
    if kind == "Job":
        return (status.get("succeeded") or 0) >= 1
    want = spec.get("replicas", 1)
    return (status.get("observedGeneration") == obj["metadata"].get("generation")
            and (status.get("readyReplicas") or 0) == want
            and (status.get("updatedReplicas") or 0) == want)


def audit(path, user, start, end):
    """Every request of USER received in [start, end), once (watches have a
    ResponseStarted and, when they end, a ResponseComplete stage)."""
    seen = set()
    out = {"requests": 0, "writes": 0, "lease_requests": 0, "lease_writes": 0, "event_writes": 0,
           "watches": 0, "lists": 0, "list_pages": 0, "gets": 0, "by_verb_resource": {}}
    watched = set()
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            if event.get("user", {}).get("username") != user or event["auditID"] in seen:
                continue
            t = ts(event["requestReceivedTimestamp"])
            if not start <= t < end:
                continue
            seen.add(event["auditID"])
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "?").split("?")[0])
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            verb = event["verb"]
            key = f"{verb} {resource}"
            out["by_verb_resource"][key] = out["by_verb_resource"].get(key, 0) + 1
            out["requests"] += 1
            out["watches"] += verb == "watch"
            # A list of more than one page (50 objects a page) is one list.
            out["list_pages"] += verb == "list" and "continue=" in event.get("requestURI", "")
            if verb == "watch":
                watched.add(resource)
            if not (ref.get("resource") == "leases" and ref.get("name") == LEADER_LEASE):
                out["lists"] += verb == "list"
                out["gets"] += verb == "get"
            write = verb in WRITE_VERBS
            if ref.get("resource") == "leases" and ref.get("name") == LEADER_LEASE:
                out["lease_requests"] += 1
                out["lease_writes"] += write
            elif ref.get("resource") == "events":
                out["event_writes"] += write
            elif write:
                out["writes"] += 1
    out["watched_kinds"] = len(watched)
    out["by_verb_resource"] = dict(sorted(out["by_verb_resource"].items(), key=lambda kv: -kv[1]))
    return out


def first_status(path, user, items):
    """Per number, seconds from its creation to the operator's first write of
    its status (its first reconcile's end), from the audit log: how promptly a
    new number is reconciled however many others are rolling out."""
    created = {(w["metadata"]["namespace"], w["metadata"]["name"]): ts(w["metadata"]["creationTimestamp"])
               for w in items}
    first = {}
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if (event.get("user", {}).get("username") != user or ref.get("resource") != "whatsappnumbers"
                    or ref.get("subresource") != "status" or event["verb"] not in WRITE_VERBS):
                continue
            key = (ref.get("namespace"), ref.get("name"))
            t = ts(event["requestReceivedTimestamp"])
            if key in created and t < first.get(key, math.inf):
                first[key] = t
    waits = [max(0.0, first[k] - created[k]) for k in first]
    return waits, len(created) - len(first)


def split(path, parts, prefix):
    with open(path) as f:
        docs = [d for d in f.read().split("\n---\n") if d.strip() and d.strip() != "---"]
    files = [[] for _ in range(parts)]
    for i, d in enumerate(docs):
        files[i * parts // len(docs)].append(d.removeprefix("---\n"))
    for i, chunk in enumerate(files):
        with open(f"{prefix}{i:02d}.yaml", "w") as f:
            f.write("\n---\n".join(chunk) + "\n")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "numbers":
        yaml.safe_dump_all(numbers(int(args[0]), args[1]), sys.stdout, sort_keys=False)
    elif cmd == "rbac":
        yaml.safe_dump_all(rbac(sys.stdin.read()), sys.stdout, sort_keys=False)
    elif cmd == "service-account":
        print(next(d["metadata"]["name"] for d in yaml.safe_load_all(sys.stdin) if d["kind"] == "ServiceAccount"))
    elif cmd == "ready":
        items = json.load(sys.stdin)["items"]
        minimum = int(args[1])
        print(sum(1 for w in items if w["metadata"].get("generation", 0) >= minimum and ready_condition(w)))
    elif cmd == "latency":
        items = json.load(sys.stdin)["items"]
        t0 = float(args[0])
        waits, last = [], t0
        for w in items:
            c = ready_condition(w)
            if c:
                at = ts(c["lastTransitionTime"])
                waits.append(at - ts(w["metadata"]["creationTimestamp"]))
                last = max(last, at)
        if not waits:
            sys.exit("no Ready number")
        print(f"{percentile(waits, 50):.0f} {percentile(waits, 99):.0f} {last - t0:.1f}")
    elif cmd == "first-status":
        waits, missing = first_status(args[0], args[1], json.load(sys.stdin)["items"])
        if not waits:
            sys.exit("no status written")
        print(f"{percentile(waits, 50):.1f} {percentile(waits, 99):.1f} {max(waits):.1f} {missing}")
    elif cmd == "workloads":
        items = json.load(sys.stdin)["items"]
        print(sum(1 for o in items if workload_done(o)), len(items))
    elif cmd == "audit":
        print(json.dumps(audit(args[0], args[1], float(args[2]), float(args[3]))))
    elif cmd == "split":
        split(args[0], int(args[1]), args[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
