"""DVC stage `attribute_classifier`: on data with drawn attribute labels (the synthetic source), a
small CNN that recognises hair and eye colour -> reference/attributes/ (classifier.pt, report.json).
The evaluate stage uses it to measure mode coverage; on other data it records that it does not apply."""

import numpy as np

from anime_dcgan import paths
from anime_dcgan.device import pick_device
from anime_dcgan.evaluation.attributes import save_attribute_classifier, train_attribute_classifier
from anime_dcgan.evaluation.evaluate import CLASSIFIER_FILE, COVERAGE_ATTRIBUTES, coverage_labels
from anime_dcgan.params import load_params
from anime_dcgan.util.io import atomic_dir, atomic_write_json
from anime_dcgan.util.stage import run_stage


def main() -> None:
    params = load_params()
    labels = coverage_labels(paths.MANIFEST)
    with atomic_dir(paths.REFERENCE_ATTRIBUTES) as staging:
        if labels is None:
            report = {"available": False,
                      "reason": f"the data has no {' / '.join(COVERAGE_ATTRIBUTES)} labels (synthetic source only)"}
        else:
            images = np.load(paths.PROCESSED_IMAGES, mmap_mode="r")
            classifier, report = train_attribute_classifier(images, labels, COVERAGE_ATTRIBUTES, params.seed,
                                                            pick_device(params.device), progress=True)
            save_attribute_classifier(staging / CLASSIFIER_FILE, classifier, report)
            report = {"available": True, **report}
        atomic_write_json(staging / "report.json", report)
    if report["available"]:
        accuracies = ", ".join(f"{name} {report[f'val_accuracy_{name}']:.1%}" for name in COVERAGE_ATTRIBUTES)
        print(f"attribute_classifier: validation accuracy {accuracies} ({report['train_images']:,} training and "
              f"{report['val_images']:,} validation images, {report['epochs']} epochs, {report['train_seconds']} s)")
    else:
        print(f"attribute_classifier: not trained: {report['reason']}; mode coverage is not measured")


if __name__ == "__main__":
    run_stage("attribute_classifier", main)
