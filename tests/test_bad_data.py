"""Bad images, odd modes, empty classes, tiny data: clear errors or counted skips."""
import json

import numpy as np
import pytest
from PIL import Image

from deitkit import build_config, train
from deitkit.cli import main
from deitkit.config import AugConfig, ConfigError
from deitkit.data import DataError, build_train_transform, load_dataset
from deitkit.data.sources import load_image, to_rgb

BAD = ("zero.jpg", "truncated.jpg", "text.jpg")


def _odd_tree(root, bad=True):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                arr = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"rgb{i}.png")
            Image.fromarray(arr[..., 0]).save(d / "gray.png")                      # L
            Image.fromarray(arr).convert("CMYK").save(d / "cmyk.jpg")              # CMYK
            Image.fromarray(np.dstack([arr, arr[..., :1]])).save(d / "rgba.png")   # RGBA
            Image.fromarray(arr).convert("P").save(d / "palette.png")              # P
            Image.fromarray((arr[..., 0].astype(np.uint16) * 257)).save(d / "deep.png")  # I;16
            Image.fromarray(arr[:5, :5]).save(d / "tiny.png")                       # 5x5 px
            (d / "notes.txt").write_text("not an image, ignored by extension")
    if bad:
        d = root / "train" / "a"
        (d / "zero.jpg").write_bytes(b"")
        Image.fromarray(arr).save(d / "full.jpg")
        (d / "truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[:200])
        (d / "full.jpg").unlink()
        (d / "text.jpg").write_text("hello")
    return root


def test_modes_become_sensible_rgb(tmp_path):
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    img = load_image(str(tmp_path / "deep.png"))
    assert img.mode == "RGB" and abs(int(np.asarray(img)[0, 0, 0]) - 127) <= 1  # not clipped
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"


def test_data_check_reports_bad_files(tmp_path, capsys):
    root = _odd_tree(tmp_path / "ds")
    out = tmp_path / "report.json"
    assert main(["data", "check", str(root), "--min-size", "8", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    for name in BAD:
        assert f"BAD {root / 'train' / 'a' / name}" in text
    report = json.loads(out.read_text())
    assert report["train"]["classes"] == {"a": 10, "b": 10}
    assert report["train"]["modes"]["I;16"] == 2 and report["train"]["modes"]["CMYK"] == 2
    assert report["train"]["non_images"] == 2 and len(report["train"]["small"]) == 2
    assert any("3 unreadable" in p for p in report["problems"])
    clean = _odd_tree(tmp_path / "clean", bad=False)
    assert main(["data", "check", str(clean)]) == 0
    assert "no problems found" in capsys.readouterr().out


def _cfg(root, out, *extra):
    return build_config("quickstart", overrides=[
        f"data.name={root}", f"out={out}", "epochs=1", "progress=false", "distill.kind=none",
        "model.overrides={depth: 1}", "data.batch_size=8", "data.img_size=16",
        "model.patch_size=8", "device=cpu", "data.num_workers=0", *extra])


def test_bad_image_is_an_error_naming_the_file(tmp_path):
    root = _odd_tree(tmp_path / "ds")
    with pytest.raises(DataError, match=r"cannot read image '.*train/a/(zero|truncated|text)\.jpg'"):
        train(_cfg(root, tmp_path / "run"))


def test_bad_images_skipped_and_counted(tmp_path):
    root = _odd_tree(tmp_path / "ds")
    s = train(_cfg(root, tmp_path / "run", "data.on_bad_image=skip", "data.batch_size=23"))
    assert s["skipped_images"] == 3  # 23 train items in one batch: every item is read
    listed = (tmp_path / "run" / "skipped_images.txt").read_text()
    for name in BAD:
        assert name in listed
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_images"] == 3  # the epoch's record counts them too


def test_empty_class_folder(tmp_path):
    root = _odd_tree(tmp_path / "ds", bad=False)
    (root / "train" / "zebra").mkdir()
    (root / "train" / "zebra" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="without images: zebra"):
        load_dataset(str(root))


def test_images_smaller_than_the_crop(tmp_path):
    img = Image.new("RGB", (5, 7), (10, 200, 30))
    for crop in ("pad", "rrc"):
        assert build_train_transform(AugConfig(crop=crop), 32, [0.5] * 3, [0.5] * 3)(img).shape \
            == (3, 32, 32)


def test_dataset_smaller_than_a_batch(tmp_path):
    root = _odd_tree(tmp_path / "ds", bad=False)
    with pytest.raises(ConfigError, match=r"batch_size=64 is larger than the training set \(20"):
        train(_cfg(root, tmp_path / "run", "data.batch_size=64"))
