"""What trim_kserve_crd.py and trim_trainjob_crd.py share: a CRD's OpenAPI schema closed to the
fields it lists, its large unused subtrees cut to their type."""
import json

LARGE = 2000  # Characters of JSON above which an unused subtree keeps only its type.


def strip(schema):
    """Without descriptions, with every object closed to fields it does not list."""
    if isinstance(schema, list):
        return [strip(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strip(value) for key, value in schema.items() if key != "description"}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def only_type(schema: dict) -> dict:
    return {"type": schema["type"]} if "type" in schema else {}


def shrink(schema: dict, keep=()) -> dict:
    """Each property of schema: kept when named in keep or small, else only its type."""
    schema["properties"] = {
        name: sub if name in keep or len(json.dumps(sub)) < LARGE else only_type(sub)
        for name, sub in schema["properties"].items()}
    return schema
