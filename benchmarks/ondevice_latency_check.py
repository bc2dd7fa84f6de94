"""Step latency of mobilecnn1d-train's last-block + head training program (batch 16, 1 ExecuTorch thread),
interleaved with the same eager PyTorch SGD step; latency does not depend on the weight values."""
import warnings, os, time, json; warnings.filterwarnings("ignore")
import torch, numpy as np
torch.set_num_threads(1)
from imutune.models.resnet1d import create_model
from imutune.ondevice.program import export_training_program
from imutune.ondevice.loop import OnDeviceTrainer, batch_indices
from imutune.ondevice.model import training_net
from imutune.train.losses import FilterLoss
from imutune.metrics import latency_summary
torch.manual_seed(0)
m = create_model("mobilecnn1d-train", in_channels=6, num_classes=7).eval()
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 6, 100)).astype(np.float32); y = rng.integers(0, 7, 256); w = rng.uniform(0.1, 1, 256).astype(np.float32)
p = export_training_program(m, x, variant="last-block", batch_size=16)
tr = OnDeviceTrainer(p.buffer, lr=0.02, momentum=0.9, num_threads=1)
net = training_net(m, p.trainable); opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=0.02, momentum=0.9)
lf = FilterLoss(check_weights=False)
et, ea = [], []
l0 = os.getloadavg()[0]
for i, idx in enumerate(batch_indices(256, 16, 505)):
    t0 = time.perf_counter(); tr.step(x[idx], y[idx], w[idx]); t1 = time.perf_counter()
    opt.zero_grad(); lf(net(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]), torch.from_numpy(w[idx])).backward(); opt.step(); t2 = time.perf_counter()
    if i >= 5: et.append(1000*(t1-t0)); ea.append(1000*(t2-t1))
print(json.dumps({"executorch": latency_summary(et), "eager": latency_summary(ea), "executorch_min": min(et), "load_avg_1min": [l0, os.getloadavg()[0]]}))
