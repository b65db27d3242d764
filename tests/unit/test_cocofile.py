import json

from orchestrator import cocofile


def coco():
    return {
        "images": [{"id": 1, "width": 100, "height": 50}, {"id": 2, "width": 100, "height": 50},
                   {"id": 3, "width": 100, "height": 50}, {"id": 4, "width": 100, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [10, 10, 20, 20], "iscrowd": 1},
            {"id": 3, "image_id": 3, "category_id": 7, "bbox": [120, 10, 20, 20]},  # outside the image
        ],
        "categories": [{"id": 7, "name": "a"}, {"id": 0, "name": "unused"}],
    }


def test_train_image_ids_filters_images_without_usable_boxes():
    assert cocofile.train_image_ids(coco(), filter_empty=True) == [1]
    assert cocofile.train_image_ids(coco(), filter_empty=False) == [1, 2, 3, 4]


def test_clipped_box():
    assert cocofile.clipped_box([-5, -5, 20, 20], 100, 50) == [0, 0, 15, 15]
    assert cocofile.clipped_box([90, 40, 20, 20], 100, 50) == [90, 40, 100, 50]
    assert cocofile.clipped_box([10, 10, 0, 5], 100, 50) is None
    assert cocofile.clipped_box([10, 10, -3, 5], 100, 50) is None


def test_count_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(coco()))
    assert cocofile.count_train_images(str(ann), True) == 1
    calls = []
    original = cocofile.load_coco
    monkeypatch.setattr(cocofile, "load_coco", lambda url: calls.append(url) or coco())
    assert cocofile.count_train_images(str(ann), True) == 1
    assert calls == []                                    # served from the cache
    data = coco()
    data["annotations"].append({"id": 9, "image_id": 4, "category_id": 7, "bbox": [1, 1, 30, 30]})
    ann.write_text(json.dumps(data) + " ")               # new size → re-read
    monkeypatch.setattr(cocofile, "load_coco", original)
    assert cocofile.count_train_images(str(ann), True) == 2


def test_broken_annotation_file_is_a_clear_error(tmp_path):
    import pytest
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(cocofile.AnnotationError, match="not valid JSON"):
        cocofile.load_coco(str(bad))
    with pytest.raises(cocofile.AnnotationError, match="does not exist"):
        cocofile.load_coco(str(tmp_path / "missing.json"))


def test_a_bbox_of_strings_is_an_error_naming_the_file_and_the_annotation(tmp_path):
    import pytest
    data = coco()
    data["annotations"].append({"id": 99, "image_id": 4, "category_id": 7, "bbox": ["a", "b", "c", "d"]})
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    with pytest.raises(cocofile.AnnotationError) as err:
        cocofile.count_train_images(str(path), filter_empty=True)
    assert str(path) in str(err.value) and "annotation 99" in str(err.value) and "fix the file" in str(err.value)
