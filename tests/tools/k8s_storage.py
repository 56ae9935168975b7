"""Checks what kubernetes-validate cannot: a Job that runs pods in parallel and mounts a
PersistentVolumeClaim needs that claim to be ReadWriteMany (the pods may land on several
nodes). Every claim a workload mounts must be defined in the files given, so its access
modes can be read. Prints one line per problem; exit 1 if any."""

import sys

import yaml


def pod_specs(doc):
    """(name, parallelism, pod spec) of each Job or CronJob in doc."""
    kind = doc.get("kind")
    name = doc.get("metadata", {}).get("name", "?")
    if kind == "Job":
        spec = doc["spec"]
        yield name, spec.get("parallelism", 1), spec["template"]["spec"]
    elif kind == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]
        yield name, spec.get("parallelism", 1), spec["template"]["spec"]


def main(paths):
    docs = [d for p in paths for d in yaml.safe_load_all(open(p)) if d]
    claims = {
        d["metadata"]["name"]: d["spec"].get("accessModes", [])
        for d in docs
        if d.get("kind") == "PersistentVolumeClaim"
    }
    problems = []
    for doc in docs:
        for name, parallelism, spec in pod_specs(doc):
            for vol in spec.get("volumes", []):
                claim = vol.get("persistentVolumeClaim", {}).get("claimName")
                if claim is None:
                    continue
                if claim not in claims:
                    problems.append(f"{name}: claim {claim} is not defined in {paths}")
                elif parallelism > 1 and "ReadWriteMany" not in claims[claim]:
                    problems.append(
                        f"{name}: {parallelism} parallel pods mount claim {claim}, "
                        f"whose access modes {claims[claim]} lack ReadWriteMany"
                    )
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
