"""What a version's tags say it learned from: one reading for a TrainingJob's status and `kubeforge lineage`."""

from kubeforge.core import modelcontract as mc


def test_a_trained_versions_data_set_is_read_with_its_counts_as_numbers() -> None:
    tags = {mc.TAG_DATASET_URI: "http://gw/feedback", mc.TAG_DATASET_SHA256: "ab12", mc.TAG_DATASET_ROWS: "96"}
    tags[mc.TAG_DATASET_ROWS_LEFT_OUT] = "4"
    assert mc.trained_on(tags) == {"uri": "http://gw/feedback", "sha256": "ab12", "rows": 96, "rowsLeftOut": 4}


def test_an_imported_version_names_the_data_its_baseline_came_from() -> None:
    tags = {mc.TAG_IMPORTED_FILE: "model.onnx", mc.TAG_REFERENCE_URI: "/data/ref.csv", mc.TAG_REFERENCE_ROWS: "150"}
    tags[mc.TAG_REFERENCE_SHA256] = "cd34"
    assert mc.trained_on(tags) == {"uri": "/data/ref.csv", "sha256": "cd34", "rows": 150}


def test_what_no_tag_says_or_no_count_is_left_out() -> None:
    assert mc.trained_on({mc.TAG_IMPORTED_FILE: "model.onnx"}) == {}
    assert mc.trained_on({mc.TAG_DATASET_URI: "/d.csv", mc.TAG_DATASET_ROWS: "many"}) == {"uri": "/d.csv"}
