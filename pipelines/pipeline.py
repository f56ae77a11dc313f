"""The pipeline: preprocess -> train -> fine_tune -> evaluate -> export (if accurate enough)."""
from kfp import dsl

from components import configs, kfp_steps


def create_pipeline(gpu_count: int = configs.GPU_COUNT,
                    gpu_resource: str = configs.GPU_RESOURCE):
    """Returns the pipeline. gpu_count GPUs of resource gpu_resource are requested for train
    and fine_tune (0: none, as for local runs, where kfp.local ignores them anyway)."""

    @dsl.pipeline(name=configs.PIPELINE_NAME,
                  description="Transfer-learning image classifier: preprocess, train a new head "
                              "on a pretrained backbone, fine-tune, evaluate, export.")
    def pipeline(
        data_dir: str,
        backbone: str = configs.BACKBONE,
        weights: str = configs.WEIGHTS,
        image_size: int = configs.IMAGE_SIZE,
        train_ratio: float = configs.TRAIN_RATIO,
        validation_ratio: float = configs.VALIDATION_RATIO,
        test_ratio: float = configs.TEST_RATIO,
        seed: int = configs.SEED,
        resize_mode: str = configs.RESIZE_MODE,
        num_workers: int = configs.NUM_WORKERS,
        min_images_per_class: int = configs.MIN_IMAGES_PER_CLASS,
        max_rejected_fraction: float = configs.MAX_REJECTED_FRACTION,
        max_image_pixels: int = configs.MAX_IMAGE_PIXELS,
        previous_manifest: str = configs.PREVIOUS_MANIFEST,
        batch_size: int = configs.BATCH_SIZE,
        pooling: str = configs.POOLING,
        dropout: float = configs.DROPOUT,
        augment_flip: str = configs.AUGMENT_FLIP,
        augment_rotation: float = configs.AUGMENT_ROTATION,
        augment_zoom: float = configs.AUGMENT_ZOOM,
        augment_translation: float = configs.AUGMENT_TRANSLATION,
        augment_contrast: float = configs.AUGMENT_CONTRAST,
        epochs: int = configs.EPOCHS,
        learning_rate: float = configs.LEARNING_RATE,
        fine_tune_epochs: int = configs.FINE_TUNE_EPOCHS,
        fine_tune_layers: int = configs.FINE_TUNE_LAYERS,
        fine_tune_learning_rate: float = configs.FINE_TUNE_LEARNING_RATE,
        early_stopping_patience: int = configs.EARLY_STOPPING_PATIENCE,
        reduce_lr_patience: int = configs.REDUCE_LR_PATIENCE,
        target_accuracy: float = configs.TARGET_ACCURACY,
        cache_budget_mb: int = configs.CACHE_BUDGET_MB,
        min_test_accuracy: float = configs.MIN_TEST_ACCURACY,
    ):
        """Transfer-learning image classifier.

        Args:
            data_dir: Folder with one sub-folder of images per class.
            backbone: keras.applications backbone, e.g. MobileNetV2, EfficientNetB0, ResNet50.
            weights: Backbone weights: imagenet, none, or the path/URI of a weights file.
            image_size: Images are resized to image_size x image_size pixels.
            train_ratio: Fraction of each class for training.
            validation_ratio: Fraction of each class for validation.
            test_ratio: Fraction of each class for the test split.
            seed: Seed for the split, shuffling and weight initialisation.
            resize_mode: stretch (ignore aspect ratio), pad (letterbox) or crop (centre).
            num_workers: Preprocess worker processes; 0: one per CPU.
            min_images_per_class: Fail if a class keeps fewer usable images than this.
            max_rejected_fraction: Fail if a larger fraction of the input files is rejected.
            max_image_pixels: Reject larger images (guards against decompression bombs).
            previous_manifest: Manifest of an earlier run: its images keep their split.
            batch_size: Images per training step.
            pooling: Head pooling: avg (global average) or flatten.
            dropout: Dropout rate before the classifier layer.
            augment_flip: Random flips: none, horizontal, vertical, horizontal_and_vertical.
            augment_rotation: Random rotation, as a fraction of a full turn.
            augment_zoom: Random zoom, as a fraction of the image size.
            augment_translation: Random shift, as a fraction of the image size.
            augment_contrast: Random contrast change factor.
            epochs: Maximum epochs training the head (frozen backbone).
            learning_rate: Adam learning rate while training the head.
            fine_tune_epochs: Maximum further epochs with the top backbone layers unfrozen.
            fine_tune_layers: How many top backbone layers to unfreeze (BatchNorm stays frozen).
            fine_tune_learning_rate: Adam learning rate while fine-tuning.
            early_stopping_patience: Epochs without val_loss improvement before stopping.
            reduce_lr_patience: Epochs without val_loss improvement before dividing the LR by 5.
            target_accuracy: Stop a phase once val_accuracy reaches this.
            cache_budget_mb: Cache decoded images in memory when a split fits this many MB.
            min_test_accuracy: Export the model only if its test accuracy reaches this.
        """
        fit_args = dict(batch_size=batch_size, early_stopping_patience=early_stopping_patience,
                        reduce_lr_patience=reduce_lr_patience, target_accuracy=target_accuracy,
                        cache_budget_mb=cache_budget_mb, seed=seed)
        prep = kfp_steps.preprocess(
            data_dir=data_dir, image_size=image_size, train_ratio=train_ratio,
            validation_ratio=validation_ratio, test_ratio=test_ratio, seed=seed,
            resize_mode=resize_mode, num_workers=num_workers,
            min_images_per_class=min_images_per_class,
            max_rejected_fraction=max_rejected_fraction, max_image_pixels=max_image_pixels,
            previous_manifest=previous_manifest)
        dataset = prep.outputs["dataset"]
        train = kfp_steps.train(
            dataset=dataset, backbone=backbone, weights=weights, pooling=pooling,
            dropout=dropout, augment_flip=augment_flip, augment_rotation=augment_rotation,
            augment_zoom=augment_zoom, augment_translation=augment_translation,
            augment_contrast=augment_contrast, epochs=epochs, learning_rate=learning_rate,
            **fit_args)
        tune = kfp_steps.fine_tune(
            dataset=dataset, trained_model=train.outputs["model"],
            train_history=train.outputs["history"], fine_tune_layers=fine_tune_layers,
            fine_tune_learning_rate=fine_tune_learning_rate, fine_tune_epochs=fine_tune_epochs,
            **fit_args)
        for task in (train, tune):
            if gpu_count:
                task.set_accelerator_type(gpu_resource).set_accelerator_limit(gpu_count)
        evaluation = kfp_steps.evaluate(
            dataset=dataset, model=tune.outputs["model"],
            train_history=train.outputs["history"], fine_tune_history=tune.outputs["history"],
            batch_size=batch_size, min_test_accuracy=min_test_accuracy)
        with dsl.If(evaluation.outputs["Output"] == True,  # noqa: E712
                    name="accurate-enough"):
            kfp_steps.export(dataset=dataset, model=tune.outputs["model"])

    return pipeline
