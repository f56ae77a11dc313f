import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import export, predict, storage
from components.errors import TlpError
from conftest import make_image


def small_model() -> keras.Model:
    """A small untrained 3-class CNN whose outputs depend on the image (a MobileNetV2 with
    random weights outputs the same for every image, which would make agreement trivial).
    Its convolution has enough weights (> 1024) for TFLite's dynamic-range quantization."""
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax", name="classifier")])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 3-class model exported by the export step, published to a destination folder."""
    from components import preprocess
    from conftest import make_image_folder

    base = tmp_path_factory.mktemp("export")
    data = make_image_folder(base / "images", {"red": 10, "green": 10, "blue": 10})
    preprocess.run(str(data), str(base / "ds"), str(base / "m.parquet"), 32, 0.4, 0.1, 0.5, 1)
    model = small_model()
    model.save(base / "model.keras")
    summary = export.export(str(base / "model.keras"), str(base / "ds"), str(base / "out"),
                            "SmallCNN", {"accuracy": 0.5, "loss": 1.0, "initial": {
                                "accuracy": 0.3, "loss": 1.1, "top_k_accuracy": 0.6}},
                            {"train": {"epoch": [1, 2], "learning_rate": [1e-3, 2e-4],
                                       "epoch_seconds": [1.25, 2.5]}},
                            destination=str(base / "served"))
    return base / "out", model, summary


def _encoded(fmt: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    make_image((200, 30, 30), size, seed=5).save(buffer, format=fmt)
    return buffer.getvalue()


def test_export_writes_saved_model_keras_model_and_labels(exported):
    out, _, _ = exported
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "model.keras").is_file()
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["backbone"] == "SmallCNN" and card["model"]["parameters"] == 1987
    assert card["data"]["class_names"] == ["blue", "green", "red"]
    assert card["data"]["examples_per_split"]["test"] == 15
    assert card["data"]["examples_per_class"]["test"] == {"blue": 5, "green": 5, "red": 5}
    assert card["data"]["preprocess_summary"]["written"] == 30
    assert card["training"]["train"] == {"epochs": 2, "learning_rates": [2e-4, 1e-3],
                                         "seconds": 3.8}
    assert card["test_metrics"] == {"accuracy": 0.5, "loss": 1.0}
    assert card["initial_test_metrics"] == {"accuracy": 0.3, "loss": 1.1, "top_k_accuracy": 0.6}
    assert card["versions"]["tensorflow"] == tf.__version__


@pytest.mark.parametrize("fmt, size", [("JPEG", (32, 32)), ("JPEG", (300, 200)),
                                       ("PNG", (17, 61)), ("PNG", (640, 480))])
def test_signature_accepts_jpeg_and_png_of_any_size(exported, fmt, size):
    out, model, _ = exported
    signatures = tf.saved_model.load(str(out / "saved_model")).signatures
    result = signatures["serving_default"](
        image_bytes=tf.constant([_encoded(fmt, size), _encoded(fmt, size)]))
    probs = result["probabilities"].numpy()
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert result["class_names"].numpy()[0].tolist() == [b"blue", b"green", b"red"]
    top = int(probs[0].argmax())
    assert result["top_class"].numpy().tolist() == [top, top]
    assert result["top_class_name"].numpy()[0] == [b"blue", b"green", b"red"][top]
    resized = export.decode_and_resize(tf.constant(_encoded(fmt, size)), 32)[None]
    np.testing.assert_allclose(probs[0], keras.ops.convert_to_numpy(model(resized))[0],
                               atol=1e-5)
    from_images = signatures["serving_images"](images=resized)
    np.testing.assert_allclose(from_images["probabilities"].numpy()[0], probs[0], atol=1e-5)
    assert from_images["top_class"].numpy()[0] == top


def test_tflite_models_agree_with_keras_and_quantized_is_smaller(exported):
    out, _, summary = exported
    plain, quantized = (summary["tflite"][name]
                        for name in ("model.tflite", "model_quantized.tflite"))
    assert plain["test_images"] == 15
    assert plain["top1_agreement"] == 1 and plain["max_probability_difference"] < 1e-4
    assert quantized["top1_agreement"] >= 0.9
    assert quantized["size_bytes"] < plain["size_bytes"]
    assert plain["size_bytes"] == (out / "model.tflite").stat().st_size
    card = json.loads((out / "model_card.json").read_text())
    assert card["tflite"] == summary["tflite"]


def test_versions_are_numbered_and_never_overwritten(exported, tmp_path):
    out, _, summary = exported
    first = Path(summary["published"])
    assert first.name == "1" and (first / "saved_model.pb").is_file()
    assert (first / "model.tflite").is_file() and (first / "labels.txt").is_file()
    destination = tmp_path / "served"
    (destination / "3").mkdir(parents=True)
    (destination / "3" / "keep.txt").write_text("older version")
    (destination / "notes").mkdir()
    assert export.publish(out, destination) == str(destination / "4")
    assert export.publish(out, destination) == str(destination / "5")
    assert (destination / "3" / "keep.txt").read_text() == "older version"
    assert sorted(p.name for p in destination.iterdir()) == ["3", "4", "5", "notes"]


@pytest.mark.parametrize("bucket_fixture", ["gcs_bucket", "s3_bucket"])
def test_bucket_versions_are_numbered_and_never_overwritten(request, bucket_fixture, exported,
                                                            tmp_path):
    out, model, _ = exported
    destination = request.getfixturevalue(bucket_fixture) + "/models"
    storage.write_bytes(f"{destination}/3/keep.txt", b"older version")
    storage.write_bytes(f"{destination}/notes/readme.txt", b"not a version")
    assert export.publish(out, destination) == f"{destination}/4"
    # A claim without its version yet (another export still uploading) is skipped too.
    storage.write_bytes(f"{destination}/.claims/5", b"")
    assert export.publish(out, destination) == f"{destination}/6"
    assert storage.read_bytes(f"{destination}/3/keep.txt") == b"older version"
    names = {uri[len(destination) + 1:] for uri in storage.list_files(destination)}
    assert {name.split("/")[0] for name in names} == {"3", "4", "6", ".claims", "notes"}
    # TF Serving's layout, and the published SavedModel serves what the local one does.
    local = {p.relative_to(out / "saved_model").as_posix()
             for p in (out / "saved_model").rglob("*") if p.is_file()}
    others = {p.name for p in out.iterdir() if p.is_file()}
    assert {name[2:] for name in names if name.startswith("6/")} == local | others
    storage.download_dir(f"{destination}/6", tmp_path / "6")
    image = _encoded("PNG", (50, 40))
    served, expected = (tf.saved_model.load(str(path)).signatures["serving_default"](
        image_bytes=tf.constant([image]))["probabilities"].numpy()
        for path in (tmp_path / "6", out / "saved_model"))
    np.testing.assert_allclose(served, expected)


def test_verification_catches_a_model_that_disagrees(exported, tmp_path):
    from components import model as model_lib

    out, _, _ = exported
    other = model_lib.build_model(3, "MobileNetV2", 32, "none")
    rng = np.random.default_rng(0)
    other.get_layer("classifier").set_weights(
        [w + rng.normal(0, 1, w.shape) for w in other.get_layer("classifier").get_weights()])
    with pytest.raises(TlpError, match="disagrees"):
        export.verify_saved_model(export.keras_reference(other, str(out.parent / "ds")),
                                  out / "saved_model")


@pytest.mark.parametrize("model_file", ["", "saved_model", "model.keras", "model.tflite",
                                        "model_quantized.tflite"])
def test_predict_accepts_every_exported_form(exported, tmp_path, model_file):
    out, model, _ = exported
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(_encoded("PNG", (50, 40)))
    (folder / "sub" / "b.jpg").write_bytes(_encoded("JPEG", (20, 70)))
    (folder / "notes.txt").write_text("not an image, skipped")
    results = predict.predict_files(out / model_file, [folder], top_k=2)
    assert [path.name for path, _ in results] == ["a.png", "b.jpg"]
    for path, top in results:
        image = export.decode_and_resize(tf.constant(path.read_bytes()), 32)[None]
        expected = keras.ops.convert_to_numpy(model(image))[0]
        names = ["blue", "green", "red"]
        assert [name for name, _ in top] == [names[i] for i in np.argsort(-expected)[:2]]
        np.testing.assert_allclose([p for _, p in top], np.sort(expected)[::-1][:2],
                                   atol=0.02 if "quantized" in model_file else 1e-4)


def test_predict_reports_bad_input(exported, tmp_path):
    out, _, _ = exported
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(TlpError, match="bad.png is not a readable"):
        predict.predict_files(out, [bad])
    with pytest.raises(TlpError, match="no such image file or folder"):
        predict.predict_files(out, [tmp_path / "missing.png"])
    with pytest.raises(TlpError, match="not an exported model folder"):
        predict.predict_files(tmp_path, [bad])


@pytest.fixture
def rest_server(exported):
    """Serves the exported SavedModel over TF Serving's REST predict protocol (row format,
    base64 binary inputs) on a free local port."""
    import base64
    import http.server
    import threading

    serve = tf.saved_model.load(str(exported[0] / "saved_model")).signatures["serving_default"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/models/tlp:predict":
                self.send_error(404)
                return
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            images = [base64.b64decode(i["image_bytes"]["b64"]) for i in request["instances"]]
            outputs = {k: v.numpy().tolist()
                       for k, v in serve(image_bytes=tf.constant(images)).items()}
            rows = [{k: v[i] for k, v in outputs.items()} for i in range(len(images))]
            body = json.dumps({"predictions": rows}, default=bytes.decode).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/models/tlp"
    server.shutdown()


def test_predict_url_matches_the_local_model(exported, rest_server, tmp_path, capsys):
    from pipelines import cli

    out, _, _ = exported
    for name, fmt in (("a.png", "PNG"), ("b.jpg", "JPEG")):
        (tmp_path / name).write_bytes(_encoded(fmt, (45, 30)))
    images = [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    assert cli.main(["predict", "--url", f"{rest_server}:predict", *images]) == 0
    remote = capsys.readouterr().out
    assert cli.main(["predict", str(out), *images]) == 0
    assert remote == capsys.readouterr().out and remote.count("\n") == 3
    assert cli.main(["predict", "--url", f"{rest_server}:nothing", images[0]]) == 2
    assert "gave no predictions" in capsys.readouterr().err
