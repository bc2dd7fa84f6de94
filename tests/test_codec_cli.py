"""``imutune codec train|encode|decode`` on user files; decoded uploads feed ``imutune finetune``;
bad streams give a clear error and leave nothing behind."""
from __future__ import annotations

import json

import pytest
from imutune.cli import main
from imutune.data.recordings import load_npz, save_npz

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from imutune.data.recordings import load_watch

    root = tmp_path_factory.mktemp("codec_cli")
    recs = load_watch(subjects=[4])
    (root / "train").mkdir()
    for r in recs[:6]:
        save_npz(r, root / "train" / f"{r.name}.npz")
    save_npz(recs[7], root / "one.npz")
    rc = main(["codec", "train", "--data", str(root / "train"), "--out", str(root / "codec"), "--epochs", "1",
               "--latent-channels", "4", "--no-export", "--no-progress", "--device", "cpu"])
    assert rc == 0
    return root, recs


def test_train_encode_decode_round_trip(files, capsys):
    root, recs = files
    assert (root / "codec" / "codec.json").is_file() and (root / "codec" / "codec_train_config.json").is_file()
    capsys.readouterr()
    assert main(["codec", "encode", "--codec", str(root / "codec"), "--data", str(root / "one.npz"),
                 "--out", str(root / "one.imz")]) == 0
    res = json.loads(capsys.readouterr().out)
    info = res["files"][str(root / "one.imz")]
    assert info["bytes"] == (root / "one.imz").stat().st_size
    assert 0.8 < info["bits_per_sample"] / info["estimate_bits_per_sample"] < 1.6   # header included
    assert main(["codec", "decode", "--codec", str(root / "codec"), "--in", str(root / "one.imz"),
                 "--out", str(root / "dec" / "one.npz")]) == 0
    dec = load_npz(root / "dec" / "one.npz")
    assert dec.n_samples == recs[7].n_samples and dec.channels == recs[7].channels
    assert (dec.labels == recs[7].labels).all()


def test_decoded_uploads_feed_finetune(files, tmp_path):
    root, recs = files
    assert main(["codec", "encode", "--codec", str(root / "codec"), "--data", str(root / "train"),
                 "--out", str(tmp_path / "up")]) == 0
    for f in sorted((tmp_path / "up").glob("*.imz")):
        assert main(["codec", "decode", "--codec", str(root / "codec"), "--in", str(f),
                     "--out", str(tmp_path / "dec" / f"{f.stem}.npz")]) == 0
    assert main(["pretrain", "--data", str(root / "train"), "--out", str(tmp_path / "base"), "--model", "tinycnn1d",
                 "--hop-s", "1.0", "--epochs", "1", "--no-progress", "--device", "cpu"]) == 0
    assert main(["finetune", "--base", str(tmp_path / "base"), "--data", str(tmp_path / "dec"), "--out",
                 str(tmp_path / "tuned"), "--loss", "ce", "--epochs", "1", "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "tuned" / "model.json").is_file()


def test_bad_streams_fail_cleanly_and_write_nothing(files, tmp_path, capsys):
    root, _ = files
    data = (root / "one.imz").read_bytes() if (root / "one.imz").exists() else None
    if data is None:
        main(["codec", "encode", "--codec", str(root / "codec"), "--data", str(root / "one.npz"),
              "--out", str(root / "one.imz")])
        data = (root / "one.imz").read_bytes()
    (tmp_path / "cut.imz").write_bytes(data[:-8])
    capsys.readouterr()
    assert main(["codec", "decode", "--codec", str(root / "codec"), "--in", str(tmp_path / "cut.imz"),
                 "--out", str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "cut.imz" in err and "Traceback" not in err
    assert not (tmp_path / "out.npz").exists() and not list(tmp_path.glob(".out.npz*"))
    assert main(["codec", "decode", "--codec", str(tmp_path / "nocodec"), "--in", str(tmp_path / "cut.imz"),
                 "--out", str(tmp_path / "out.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["codec", "train", "--data", str(root / "train"), "--out", str(tmp_path / "c2"), "--mode", "joint",
                 "--epochs", "1", "--no-export", "--no-progress"]) == 2
    assert "needs a classifier bundle" in capsys.readouterr().err
