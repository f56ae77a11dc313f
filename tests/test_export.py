import io

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import export, predict
from components.errors import TlpError
from conftest import make_image


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 3-class model exported by the export step (weights none: only shapes matter)."""
    from components import model as model_lib, preprocess

    base = tmp_path_factory.mktemp("export")
    from conftest import make_image_folder

    data = make_image_folder(base / "images", {"red": 5, "green": 5, "blue": 5})
    preprocess.run(str(data), str(base / "ds"), str(base / "m.parquet"), 32, 0.6, 0.2, 0.2, 1)
    model = model_lib.build_model(3, "MobileNetV2", 32, "none")
    model.save(base / "model.keras")
    export.export(str(base / "model.keras"), str(base / "ds"), str(base / "out"))
    return base / "out", model


def _encoded(fmt: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    make_image((200, 30, 30), size, seed=5).save(buffer, format=fmt)
    return buffer.getvalue()


def test_export_writes_saved_model_keras_model_and_labels(exported):
    out, _ = exported
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "model.keras").is_file()
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]


@pytest.mark.parametrize("fmt, size", [("JPEG", (32, 32)), ("JPEG", (300, 200)),
                                       ("PNG", (17, 61)), ("PNG", (640, 480))])
def test_signature_accepts_jpeg_and_png_of_any_size(exported, fmt, size):
    out, model = exported
    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    result = serve(image_bytes=tf.constant([_encoded(fmt, size), _encoded(fmt, size)]))
    probs = result["probabilities"].numpy()
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert result["class_names"].numpy()[0].tolist() == [b"blue", b"green", b"red"]
    resized = export.decode_and_resize(tf.constant(_encoded(fmt, size)), 32)[None]
    np.testing.assert_allclose(probs[0], keras.ops.convert_to_numpy(model(resized))[0],
                               atol=1e-5)


def test_verification_catches_a_model_that_disagrees(exported, tmp_path):
    from components import model as model_lib

    out, _ = exported
    other = model_lib.build_model(3, "MobileNetV2", 32, "none")
    rng = np.random.default_rng(0)
    other.get_layer("classifier").set_weights(
        [w + rng.normal(0, 1, w.shape) for w in other.get_layer("classifier").get_weights()])
    with pytest.raises(TlpError, match="disagrees"):
        export.verify_saved_model(other, out / "saved_model", str(out.parent / "ds"))


def test_predict_files_ranks_classes(exported, tmp_path):
    out, _ = exported
    image = tmp_path / "x.png"
    image.write_bytes(_encoded("PNG", (50, 50)))
    [top] = predict.predict_files(out, [image], top_k=2)
    assert len(top) == 2 and top[0][1] >= top[1][1]
    assert {name for name, _ in top} <= {"blue", "green", "red"}
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(TlpError, match="bad.png is not a readable"):
        predict.predict_files(out, [bad])
