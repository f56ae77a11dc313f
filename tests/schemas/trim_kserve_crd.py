"""Writes kserve-inferenceservice-v1beta1.json, the part of KServe's InferenceService CRD schema
that k8s/serving uses, from the CRD file (config/crd/full/serving.kserve.io_inferenceservices.yaml
in github.com/kserve/kserve; Apache-2.0, see KSERVE-LICENSE):

    python tests/schemas/trim_kserve_crd.py CRD_FILE SOURCE_DESCRIPTION

Kept whole: spec.predictor.model and the predictor's small fields. Large subtrees that
k8s/serving does not set (the pod spec's volumes, affinity, containers, ...; canary, explainer,
transformer; status) keep their name and type only, so a misspelt field is still caught. Every
object lists its fields exhaustively (additionalProperties false): the API server's strict
field validation (kubectl's default) rejects unknown fields too.
"""
import json
import sys
from pathlib import Path

import yaml

from crd_trim import only_type, shrink, strip


def trim(crd: dict) -> dict:
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    root = version["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    predictor = spec["properties"]["predictor"]
    shrink(predictor, keep=("model",))
    spec["properties"] = {name: sub if name == "predictor" else only_type(sub)
                          for name, sub in spec["properties"].items()}
    root["properties"]["status"] = only_type(root["properties"]["status"])
    return strip(root)


if __name__ == "__main__":
    crd_file, source = sys.argv[1:]
    schema = {"$comment": f"Trimmed from {source} by trim_kserve_crd.py. Apache-2.0 (KServe "
                          "authors): see KSERVE-LICENSE.",
              **trim(yaml.safe_load(Path(crd_file).read_text()))}
    out = Path(__file__).with_name("kserve-inferenceservice-v1beta1.json")
    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
