"""Multi-head rehearsal for a new class set (issue 15, item 4): imutune.personalize.finetune keeps the
source head as a second head (imutune.models.resnet1d.MultiHead) and rehearses source windows through it,
so the source activities survive a fine-tune on new ones; the saved bundle is the target model and
keeps the rehearsed source head as data (source_head_bundle rebuilds it)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from imutune.models.resnet1d import MultiHead, create_model
from imutune.personalize.finetune import FinetuneConfig, _MultiHeadLoss, finetune, source_head_bundle
from imutune.signal.windows import Normalizer, WindowConfig, Windows
from imutune.train.bundle import ModelBundle, load_bundle, save_bundle
from imutune.train.config import FINETUNE, TrainConfig
from imutune.train.loop import predict_logits, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py

C, T = 3, 32
WINDOW = WindowConfig(window_s=0.64, hop_s=0.32, sample_rate_hz=50.0)   # T = 32 samples
# lr 1e-2: a fine-tune aggressive enough that the backbone forgets the source classes without rehearsal
FT = FinetuneConfig(train=replace(FINETUNE, device="cpu", lr=1e-2), loss="ce")


def _source(n, seed):
    """Source classes a, b, c: +1.5 on channel 0, 1, 2."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, C, T)).astype(np.float32)
    for c in range(3):
        x[y == c, c, :] += 1.5
    return Windows(x, y.astype(np.int64), (np.arange(n) % 8).astype(np.int64), np.array(["src"] * n),
                   ("a", "b", "c"), ("x", "y", "z"))


def _target(n, seed):
    """New classes p, q: a sinusoid of period 8 or 4 samples on every channel (nothing the source used)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.arange(T)
    x = rng.normal(size=(n, C, T)).astype(np.float32)
    x[y == 0] += 2 * np.sin(2 * np.pi * t / 8)[None, None, :]
    x[y == 1] += 2 * np.sin(2 * np.pi * t / 4)[None, None, :]
    return Windows(x, y.astype(np.int64), (np.arange(n) % 8).astype(np.int64), np.array(["me"] * n),
                   ("p", "q"), ("x", "y", "z"))


@pytest.fixture(scope="module")
def base():
    src = _source(120, 0)
    torch.manual_seed(0)
    model = create_model("tinycnn1d", in_channels=C, num_classes=3)
    norm = Normalizer.fit(src.x)
    train(model, norm(src.x), src.y, config=TrainConfig(epochs=10, batch_size=16, lr=1e-2, device="cpu"),
          progress=False)
    return ModelBundle(model, "tinycnn1d", src.class_names, src.channels, WINDOW, norm, {"stage": "test"}), src


def _acc(bundle, w):
    return float((predict_logits(bundle.model, bundle.normalizer(w.x), device="cpu").argmax(1) == w.y).mean())


def test_rehearsal_keeps_the_source_classes_of_a_new_class_fine_tune(base, tmp_path):
    b, src = base
    src_test, tgt, tgt_test = _source(300, 9), _target(20, 1), _target(200, 5)
    assert _acc(b, src_test) > 0.95
    plain = finetune(b, tgt, config=FT, progress=False)
    rehearsed = finetune(b, tgt, config=replace(FT, rehearsal_ratio=1.0), source_windows=src, progress=False)
    assert rehearsed.info["rehearsal"] == "multi-head" and rehearsed.info["n_rehearsal"] == 20
    assert rehearsed.info["head_replaced"] and rehearsed.class_names == ("p", "q")
    assert rehearsed.model.num_classes == 2 and rehearsed.info["steps"] == 90
    # both learn the new classes
    assert _acc(plain, tgt_test) > 0.9 and _acc(rehearsed, tgt_test) > 0.9
    # the source classes through the source head: forgotten without rehearsal (0.62 measured), kept with it (1.0)
    forgot = _acc(source_head_bundle(plain, base=b), src_test)
    kept = _acc(source_head_bundle(rehearsed), src_test)
    assert kept > 0.9 and kept >= forgot + 0.2
    # the bundle saves and loads; the rehearsed source head comes back bit for bit, and its bundle saves too
    save_bundle(rehearsed, tmp_path / "ft")
    loaded = load_bundle(tmp_path / "ft")
    assert loaded.class_names == ("p", "q")
    x = loaded.normalizer(src_test.x)
    assert np.array_equal(predict_logits(loaded.model, x, device="cpu"),
                          predict_logits(rehearsed.model, x, device="cpu"))
    sb = source_head_bundle(loaded)
    assert sb.class_names == ("a", "b", "c") and sb.info["rehearsed"] is True
    assert np.array_equal(predict_logits(sb.model, x, device="cpu"),
                          predict_logits(source_head_bundle(rehearsed).model, x, device="cpu"))
    save_bundle(sb, tmp_path / "src_head")
    assert _acc(load_bundle(tmp_path / "src_head"), src_test) == kept


def test_multi_head_loss_is_target_loss_plus_ratio_times_source_ce():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)                       # K_t = 2 target logits, then K_s = 3 source logits
    y = torch.tensor([0, 1, 1, 2, 4, 3])            # 3 target windows, 3 source windows (labels offset by 2)
    w = torch.tensor([1.0, 0.5, 0.0, 1.0, 1.0, 1.0])
    got = _MultiHeadLoss(2, 0.25)(logits, y, w)
    ce = torch.nn.functional.cross_entropy
    tgt = (w[:3] * ce(logits[:3, :2], y[:3], reduction="none")).sum() / w[:3].sum()
    src = ce(logits[3:, 2:], y[3:] - 2)
    assert torch.allclose(got, tgt + 0.25 * src)
    only_target = _MultiHeadLoss(2, 0.25)(logits[:3], y[:3], w[:3])
    assert torch.allclose(only_target, tgt)


def test_multihead_wrapper_shares_the_backbone():
    torch.manual_seed(0)
    m = create_model("tinycnn1d", in_channels=C, num_classes=2)
    mh = MultiHead(m, [torch.nn.Linear(m.embedding_dim, 3)]).eval()
    x = torch.randn(4, C, T)
    out = mh(x)
    assert out.shape == (4, 5) and mh.splits == (2, 3) and mh.num_classes == 5
    assert torch.equal(out[:, :2], m.eval()(x))
    with pytest.raises(ValueError, match=r"every extra head must be an nn.Linear with in_features 16"):
        MultiHead(m, [torch.nn.Linear(7, 3)])


def test_rehearsal_errors_name_what_is_expected(base):
    b, src = base
    tgt = _target(20, 1)
    other = Windows(src.x, src.y, src.recording, src.users, ("u", "v", "w"), src.channels)
    with pytest.raises(ValueError, match=r"source_windows for rehearsal must have the target's classes \['p', 'q'\] "
                                         r"\(one head\) or, for a new class set, the model's source classes "
                                         r"\['a', 'b', 'c'\] \(multi-head rehearsal\)"):
        finetune(b, tgt, config=replace(FT, rehearsal_ratio=1.0), source_windows=other, progress=False)
    with pytest.raises(ValueError, match=r"rehearsal_ratio=1.0 needs source_windows; got None"):
        finetune(b, tgt, config=replace(FT, rehearsal_ratio=1.0), progress=False)
    plain = finetune(b, tgt, config=replace(FT, train=replace(FT.train, min_steps=0, epochs=1)), progress=False)
    with pytest.raises(ValueError, match=r"bundle has no info\['source_head'\] .* pass base="):
        source_head_bundle(plain)


def test_multi_head_fine_tune_resumes_from_its_checkpoint(base, tmp_path):
    b, src = base
    tgt = _target(20, 1)
    cfg = replace(FT, rehearsal_ratio=0.5, train=replace(FT.train, epochs=3, min_steps=12))
    ckpt = tmp_path / "ft.ckpt"
    first = finetune(b, tgt, config=cfg, source_windows=src, checkpoint_path=ckpt, progress=False)
    again = finetune(b, tgt, config=cfg, source_windows=src, checkpoint_path=ckpt, progress=False)
    assert first.info["steps"] == 12 and again.info["resumed_from_epoch"] == 3
    assert again.info["source_head"] == first.info["source_head"]
    assert all(torch.equal(u, v) for u, v in zip(first.model.state_dict().values(),
                                                 again.model.state_dict().values()))
