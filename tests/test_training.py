import json

import keras
import numpy as np

from components import model as model_lib, training


def test_target_accuracy_callback_stops_training():
    x = np.repeat(np.eye(2, dtype="float32"), 8, axis=0)
    y = np.repeat(np.array([0, 1]), 8)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    history = model.fit(x, y, validation_data=(x, y), epochs=50, verbose=0,
                        callbacks=[training.TargetAccuracyStop(1.0)])
    assert len(history.epoch) < 50
    assert history.history["val_accuracy"][-1] == 1.0
    assert all(a < 1.0 for a in history.history["val_accuracy"][:-1])


def test_train_then_fine_tune_continues_the_epoch_count(tmp_path, tiny_dataset):
    options = training.FitOptions(epochs=2, batch_size=8, target_accuracy=1.01)
    train_history = training.train(
        str(tiny_dataset), str(tmp_path / "m.keras"), str(tmp_path / "h.json"), "MobileNetV2",
        "none", "avg", 0.2, model_lib.Augmentation(), 1e-3, options)
    assert train_history["epoch"] == [1, 2]
    assert json.loads((tmp_path / "h.json").read_text()) == train_history
    tuned = training.fine_tune(
        str(tiny_dataset), str(tmp_path / "m.keras"), str(tmp_path / "h.json"),
        str(tmp_path / "m2.keras"), str(tmp_path / "h2.json"), num_layers=10,
        learning_rate=1e-5, options=options)
    assert tuned["epoch"] == [3, 4]
    assert set(tuned) >= {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"}
    model = keras.models.load_model(tmp_path / "m2.keras")
    assert sum(layer.trainable for layer in model_lib.backbone_of(model).layers) > 0


def test_fit_ends_with_the_best_validation_weights(tmp_path, tiny_dataset):
    """After fine-tuning with a huge learning rate, the model that comes out is never worse
    on validation than the best checkpoint (here: the weights that went in)."""
    model = model_lib.build_model(3, "MobileNetV2", 32, "none")
    model_lib.compile_model(model, 3, 1e-3)
    from components import tfrecords

    validation = tfrecords.load_split(tiny_dataset, "validation", 8, training=False)
    before = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
    model_lib.unfreeze_top_layers(model, 1000)
    model_lib.compile_model(model, 3, learning_rate=50.0)
    options = training.FitOptions(epochs=2, batch_size=8, target_accuracy=1.01)
    history = training.fit(model, str(tiny_dataset), options, initial_epoch=1,
                           best_val_loss=before)
    after = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
    assert after <= min([before] + history["val_loss"]) + 1e-4
