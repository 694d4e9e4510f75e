from devise.config import load_config
from devise.datasets import DataReport, load_records, split_records, unique_images


def test_a_data_section_gives_the_records_and_the_splits(tmp_path):
    config = load_config(
        None,
        [
            f"data.root={tmp_path / 'shapes'}",
            "data.shapes.images_per_category=4",
            "data.shapes.image_size=32",
            "data.split.train=2",
            "data.split.val=1",
            "data.split.test=1",
        ],
    )
    report = DataReport()
    records = load_records(config.data, report)  # generates the demo data first
    assert (tmp_path / "shapes" / "shapes.json").is_file()
    assert len(unique_images(records)) == 20 * 4 and not len(report)
    splits = split_records(records, config.data.split)
    assert {name: len(unique_images(recs)) for name, recs in splits.items()} == {"train": 40, "val": 20, "test": 20}
    assert split_records(records, config.data.split) == splits  # seeded
