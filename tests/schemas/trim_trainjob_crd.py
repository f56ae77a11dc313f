"""Writes trainer-trainjob-v1alpha1.json, the part of Kubeflow Trainer's TrainJob CRD schema
that components/trainjob.py uses, from the CRD file (manifests/base/crds/
trainer.kubeflow.org_trainjobs.yaml in github.com/kubeflow/trainer at tag v2.2.0, commit
dc7656ad878916f526cd401f30a347574cd47877; Apache-2.0, see TRAINER-LICENSE):

    python tests/schemas/trim_trainjob_crd.py CRD_FILE

Kept whole: spec.runtimeRef, spec.trainer, and in spec.runtimePatches the pod spec fields
the TrainJob sets (nodeSelector, tolerations, imagePullSecrets, serviceAccountName). Other
subtrees larger than crd_trim.LARGE keep their name and type only (status too), so a misspelt field
is still caught: every object lists its fields exhaustively (additionalProperties false, as
the trim of KServe's CRD beside it). CEL rules (x-kubernetes-validations) are not checked.
"""
import json
import sys
from pathlib import Path

import yaml

from crd_trim import only_type, shrink, strip

POD_FIELDS = ("nodeSelector", "tolerations", "imagePullSecrets", "serviceAccountName")
KEPT = ("runtimeRef", "trainer")


def trim(crd: dict) -> dict:
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    root = version["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    patch = spec["properties"]["runtimePatches"]["items"]
    jobs = (patch["properties"]["trainingRuntimeSpec"]["properties"]["template"]
            ["properties"]["spec"]["properties"]["replicatedJobs"]["items"])
    pod = (jobs["properties"]["template"]["properties"]["spec"]["properties"]["template"]
           ["properties"]["spec"])
    shrink(pod, POD_FIELDS)
    shrink(spec, KEPT + ("runtimePatches",))
    root["properties"]["status"] = only_type(root["properties"]["status"])
    root["properties"]["metadata"] = only_type(root["properties"]["metadata"])
    return strip(root)


if __name__ == "__main__":
    crd = yaml.safe_load(Path(sys.argv[1]).read_text())
    out = Path(__file__).with_name("trainer-trainjob-v1alpha1.json")
    out.write_text(json.dumps(trim(crd), indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")
