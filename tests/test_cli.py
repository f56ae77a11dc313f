import csv

import pytest

from components import configs, keras_backend
from pipelines import cli
from conftest import make_image


def _arguments(argv):
    return cli.pipeline_arguments(cli.build_parser().parse_args(argv), local=True)


def test_defaults_config_file_and_flags_in_that_order(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("epochs: 3\nimage-size: 96\nbackbone: EfficientNetB0\n"
                      "near_duplicate_distance: 6\n")
    arguments = _arguments(["run", "--local", "--config", str(config), "--epochs", "7"])
    assert arguments["epochs"] == 7  # The flag beats the file.
    assert arguments["image_size"] == 96 and arguments["backbone"] == "EfficientNetB0"
    assert arguments["batch_size"] == configs.BATCH_SIZE
    assert arguments["near_duplicate_distance"] == 6
    assert _arguments(["run", "--local", "--near-duplicate-distance", "0"])[
        "near_duplicate_distance"] == 0
    assert arguments["data_dir"] == str(configs.SAMPLE_DATA_DIR)


def test_image_size_0_becomes_the_native_size_and_the_demo_keeps_its_settings(tmp_path,
                                                                            monkeypatch):
    from components import demo_weights

    assert configs.IMAGE_SIZE == 0
    assert _arguments(["run", "--local"])["image_size"] == 224  # MobileNetV2
    assert _arguments(["run", "--local", "--backbone", "EfficientNetV2S"])["image_size"] == 384
    config = tmp_path / "config.yaml"
    config.write_text("backbone: InceptionV3\nimage_size: 0\n")
    assert _arguments(["run", "--local", "--config", str(config)])["image_size"] == 299
    weights = tmp_path / "demo.weights.h5"
    weights.write_bytes(b"")
    monkeypatch.setattr(demo_weights, "ensure_demo_weights", lambda: weights)
    demo = _arguments(["run", "--local", "--demo"])
    assert (demo["image_size"], demo["fine_tune_epochs"]) == (160, configs.DEMO_FINE_TUNE_EPOCHS)
    assert configs.DEMO_FINE_TUNE_EPOCHS != configs.FINE_TUNE_EPOCHS
    flags = _arguments(["run", "--local", "--demo", "--image-size", "96",
                        "--fine-tune-epochs", "4"])
    assert (flags["image_size"], flags["fine_tune_epochs"]) == (96, 4)  # Flags still win.


def test_help_lists_every_parameter_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0: the backbone's native size" in out and "5% crops" in out
    assert "--near-duplicate-distance" in out and "--image-size" in out


@pytest.mark.parametrize("argv, message", [
    (["--backbone", "AlexNet"], "unknown backbone 'AlexNet'"),
    (["--image-size", "8"], "image_size=8 is too small for MobileNetV2: it needs at least 32 "
                            "pixels; or set image_size to 0 for its native 224"),
    (["--backbone", "Xception", "--image-size", "64"], "image_size=64 is too small for "
                                                       "Xception: it needs at least 71"),
    (["--train-ratio", "0.5"], "split ratios sum to 0.7, not 1"),
    (["--data-dir", "/no/such/folder"], "data folder /no/such/folder does not exist"),
    (["--data-dir", "tfds:mnist:"], "data_dir='tfds:mnist:' is not a TFDS id"),
    (["--data-dir", "ftp://host/x"], "unknown scheme 'ftp'; use a local path, gs:// or s3://"),
    (["--tfds-splits", "train"], "tfds_splits='train' applies to tfds: sources only"),
    (["--data-dir", "tfds:mnist", "--tfds-data-dir", "/no/tfds"],
     "tfds_data_dir /no/tfds does not exist"),
    (["--weights", "/no/such.weights.h5"], "weights file /no/such.weights.h5 does not exist"),
    (["--epochs", "0"], "epochs=0 must be at least 1"),
    (["--optimizer", "adagrad"], "optimizer='adagrad'; choose one of adam, adamw"),
    (["--fine-tune-layers", "block_99_add"], "'block_99_add' is neither a number nor a layer"),
    (["--lr-schedule", "step", "--warmup-epochs", "2"], "warmup_epochs works with"),
    (["--head-dense-units", "128,x"], "head_dense_units='128,x'"),
    (["--fine-tune-layers", "auto", "--domain-similarity", "alike"],
     "domain_similarity='alike'"),
    (["--top-k", "0"], "top_k=0 must be at least 1"),
    (["--head-feature-views", "-1"], "head_feature_views=-1 must be at least 0"),
    (["--backend", "torch"], "backend='torch'; choose one of tensorflow, jax"),
    (["--train-nodes", "2"], "train_nodes=2 needs backend=jax"),
    (["--train-nodes", "2", "--backend", "jax"], "train_nodes=2: tlp run --local runs each "
                                                 "step as one local process"),
    (["--baseline-model", "/no/such.keras"], "baseline_model /no/such.keras does not exist"),
    (["--export-destination", "minio://b/m"], "export_destination=minio://b/m: use a local"),
    (["--model-registry", "http://mr:8080", "--export-destination", "/tmp/models"],
     "model_registry is set, so export_destination='/tmp/models' must be a bucket"),
    (["--resize-mode", "squash"], "resize_mode='squash'; choose one of stretch, pad, crop"),
    (["--image-format", "png"], "image_format='png'; choose one of jpeg, raw"),
    (["--max-rejected-fraction", "1.5"], "max_rejected_fraction=1.5 must be in [0, 1]"),
    (["--min-images-per-class", "0"], "min_images_per_class=0 must be at least 1"),
    (["--previous-manifest", "/no/m.parquet"], "previous_manifest /no/m.parquet does not exist"),
    (["--near-duplicate-distance", "13"], "near_duplicate_distance=13 must be between 0"),
    (["--near-duplicate-distance", "-1"], "near_duplicate_distance=-1 must be between 0"),
])
def test_bad_input_stops_with_one_clear_message(capsys, tmp_path, argv, message):
    assert cli.main(["run", "--local", "--pipeline-root", str(tmp_path / "root"), *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tlp: error: ") and message in error
    assert not (tmp_path / "root").exists()


def test_unknown_config_key_is_named(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epoch: 3\n")
    assert cli.main(["run", "--local", "--config", str(config)]) == 2
    assert "unknown parameter 'epoch'" in capsys.readouterr().err


def test_compile_writes_yaml_with_flag_defaults(tmp_path):
    import yaml

    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--epochs", "4", "--gpu-count", "0"]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))  # Then the Kubernetes settings.
    assert spec["root"]["inputDefinitions"]["parameters"]["epochs"]["defaultValue"] == 4
    # Left 0: preprocess resolves it for whichever backbone the run is given.
    assert spec["root"]["inputDefinitions"]["parameters"]["image_size"]["defaultValue"] == 0
    assert "accelerator" not in str(spec["deploymentSpec"])


def test_predict_prints_a_table_and_writes_csv(capsys, local_run, tmp_path):
    images = []
    for name, colour in (("r.jpg", (200, 30, 30)), ("b.png", (30, 30, 200))):
        make_image(colour, (64, 48), seed=1).save(tmp_path / name)
        images.append(str(tmp_path / name))
    table = tmp_path / "out.csv"
    assert cli.main(["predict", str(local_run.exported_model), *images, "--top-k", "2",
                     "--csv", str(table)]) == 0
    header, *lines, wrote = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["image", "top", "1", "top", "2"]
    assert len(lines) == 2 and wrote == f"wrote {table}"
    rows = list(csv.DictReader(table.open()))
    assert [(r["image"], r["rank"]) for r in rows] == [(images[0], "1"), (images[0], "2"),
                                                       (images[1], "1"), (images[1], "2")]
    for line, image in zip(lines, images):
        cells = line.split()
        assert cells[0] == image
        probs = [float(p) for p in cells[2::2]]
        assert probs == sorted(probs, reverse=True) and 0 <= probs[1] <= probs[0] <= 1
        first = next(r for r in rows if r["image"] == image)
        assert cells[1] == first["class"] and float(first["probability"]) == pytest.approx(
            probs[0], abs=1e-3)


@pytest.mark.parametrize("verbose", [False, True])
def test_a_failing_step_names_itself_and_its_log(capsys, tmp_path, image_folder, verbose):
    weights = tmp_path / "garbage.weights.h5"
    weights.write_bytes(b"not an HDF5 file")
    code = cli.main(["run", "--local", "--pipeline-root", str(tmp_path / "root"),
                     "--data-dir", str(image_folder), "--image-size", "32",
                     "--weights", str(weights)] + ["--verbose"] * verbose)
    assert code == 2
    out, error = capsys.readouterr()
    log = next((tmp_path / "root").glob(f"*/{configs.LOGS_DIR}/train.log"))
    assert "Inner task failed: 'train'" in error and f"Its log, with the cause: {log}" in error
    cause = "does not fit MobileNetV2"
    assert cause in log.read_text() and cause in out
    if verbose:  # Everything, as kfp.local prints it: its executor JSON too.
        assert "Got executor_input:" in out and "--- the last" not in out
    else:  # The progress lines, then the log's last lines.
        assert "Got executor_input:" not in out
        shown = out.splitlines()
        start = shown.index(f"--- the last {configs.FAILURE_LOG_LINES} lines of {log}:")
        assert shown[start - 1].split()[:2] == ["train", "failed"]
        assert shown[start + 1:] == log.read_text().splitlines()[-configs.FAILURE_LOG_LINES:] + [
            f"--- the whole log: {log}"]


@pytest.mark.parametrize("command, code", [
    (["compile", "-o", "p.yaml"], 0),
    # Fails in validation, after everything `tlp run` imports first.
    (["run", "--local", "--data-dir", "no-such-folder"], 2),
    # Fails on the missing model, after importing what predicting needs.
    (["predict", "no-such-model", "image.png"], 2)])
def test_tensorflow_start_up_notices_stay_off_the_console(tmp_path, command, code):
    """TensorFlow's C++ notices at import (absl, oneDNN) bypass TF_CPP_MIN_LOG_LEVEL: a fresh
    tlp, which imports it to validate, prints none of them."""
    import subprocess
    import sys
    from pathlib import Path

    tlp = Path(sys.executable).parent / "tlp"
    run = subprocess.run([str(tlp), *command], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == code, run.stderr
    assert "absl::InitializeLog" not in run.stderr and "port.cc" not in run.stderr, run.stderr


def test_a_failing_tensorflow_import_shows_what_it_printed(monkeypatch, capfd):
    """The held notices come back when the import fails: they may say why."""
    import builtins
    import os

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "tensorflow":
            os.write(2, b"libcudart.so.12: cannot open shared object file\n")
            raise ImportError("no tensorflow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(ImportError):
        keras_backend.import_tensorflow_quietly()
    assert "libcudart.so.12" in capfd.readouterr().err
