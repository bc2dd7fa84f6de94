"""Float32 sensitivity of on-device SGD: how far two eager PyTorch runs drift after 50 steps when their starting
weights differ by 1e-7 (relative); the reference for the rows variant's parity figure in benchmarks/ondevice.py."""
import warnings, copy; warnings.filterwarnings("ignore")
import torch
from dataclasses import replace
torch.set_num_threads(1)
from imutune.bench.ondevice import OnDeviceBenchConfig
from imutune.data.recordings import load_watch
from imutune.personalize.protocols import calibrate_then_use
from imutune.signal.windows import make_windows
from imutune.train.pretrain import pretrain
from imutune.train.loop import predict_proba
from imutune.ondevice.loop import eager_sgd, weight_parity, batch_indices, row_masks
from imutune.ondevice.personalize import quality_weights
from imutune.ondevice.program import variant_selection
from imutune.ondevice.model import trainable_entries
from imutune.personalize.selective import rank_filters, select_filters
c = OnDeviceBenchConfig()
recs = load_watch(subjects=list(c.subjects)); users = sorted({r.user for r in recs}); fold = users[:5]
src = [r for r in recs if r.user not in fold]
b = pretrain(make_windows(src, c.window), model_name=c.model_name, window=c.window, train_config=replace(c.pretrain, seed=0), progress=False)
base = b.model.cpu().eval()
cal, test = calibrate_then_use([r for r in recs if r.user == "subject01"], window_s=c.window.window_s)
wc = make_windows(cal, c.window); xn, y = b.normalizer(wc.x), wc.y
w, _ = quality_weights(predict_proba(base, xn, device="cpu"), y)
for v in ("last-block", "rows"):
    tr = trainable_entries(base, variant_selection(base, v))
    masks = row_masks(base, select_filters(rank_filters(base, xn, device="cpu"), 0.1), tr) if v == "rows" else {}
    bt = batch_indices(len(y), 16, 50, seed=0)
    ref = eager_sgd(base, tr, xn, y, w, bt, lr=0.02, momentum=0.9, masks=masks)
    pert = copy.deepcopy(base); g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, p in pert.named_parameters():
            if k in tr: p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=g))
    got = eager_sgd(pert, tr, xn, y, w, bt, lr=0.02, momentum=0.9, masks=masks)
    for steps in (10, 50):
        r1 = eager_sgd(base, tr, xn, y, w, bt[:steps], lr=0.02, momentum=0.9, masks=masks)
        r2 = eager_sgd(pert, tr, xn, y, w, bt[:steps], lr=0.02, momentum=0.9, masks=masks)
        print(v, "eager vs eager with 1e-7 relative perturbation of the initial weights, steps", steps, weight_parity(r2, r1), flush=True)
