"""benchmarks.tensor_memory: the op-by-op count of live tensor bytes, against hand-derived numbers."""
import torch

from benchmarks.tensor_memory import TensorMemory

MB = 2**20


def test_phase_peaks_and_labels_of_a_linear_relu_step_match_hand_count():
    # x: 1024 x 256 fp32 = 1 MiB, made outside (not counted). Forward: addmm out (1 MiB, freed once relu
    # has run), relu out (1 MiB, saved for backward), the loss scalar. Backward: threshold_backward out
    # (1 MiB) while relu's output is still saved -> forward/backward peak 2 MiB (+ scalars). Gradients:
    # weight 256 KiB + bias 1 KiB = G. The (single-tensor) AdamW step adds exp_avg and exp_avg_sq (2 G),
    # two step counters, and for the weight's denominator sqrt(v) and sqrt(v) / c live together (2 x
    # 256 KiB): optimizer-step peak 3 G + 512 KiB (+ scalars); 3 G is left at the end.
    torch.manual_seed(0)
    m = torch.nn.Linear(256, 256)
    opt = torch.optim.AdamW(m.parameters(), foreach=False)
    x = torch.randn(1024, 256)
    with TensorMemory() as mem:
        m(x).relu().sum().backward()
        opt.step()
    grads = 256 * 256 * 4 + 256 * 4
    assert abs(mem.peaks["forward_backward"] - 2 * MB) <= 64
    assert abs(mem.peaks["optimizer_step"] - (3 * grads + MB // 2)) <= 64
    assert mem.peak == mem.peaks["forward_backward"] and abs(mem.current - 3 * grads) <= 64
    rep = mem.report()
    assert abs(rep["optimizer_step"]["by_kind_mb"]["gradients"] * MB - grads) < 1
    assert abs(rep["optimizer_step"]["by_kind_mb"]["optimizer_state"] * MB - 2 * grads) <= 64
    fb = rep["forward_backward"]["largest_activation_groups_mb"]
    assert fb["addmm [1024, 256]"] == 1.0 and fb["relu [1024, 256]"] == 1.0  # the snapshot at the peak


def test_views_and_in_place_results_are_not_new_memory():
    base = torch.zeros(1000)  # 4000 bytes, made outside
    with TensorMemory() as mem:
        v = base.view(10, 100).t()  # a view of a storage made outside: not counted
        v.add_(1.0)  # in place: no new storage
        parts = base.split(300)  # a list of views (one aliasing return): not counted either
        assert mem.current == 0 and len(parts) == 4
        y = base * 2  # 4000 new bytes
        z = y[:10]  # a view of y: counted once, with y
        del y
        assert mem.current == 4000  # z keeps y's storage alive
        del z
    assert mem.current == 0 and mem.peak == 4000
    assert mem.report()["forward_backward"]["largest_activation_groups_mb"] == {"mul [1000]": 4000 / MB}


def test_backward_through_split_modules_is_its_own_phase():
    # head(layer(x)): the head's backward (forward_backward) ends where the layer's backward begins.
    # x: 512 x 128 (256 KiB, made outside). layer out: 256 KiB (relu's result, saved for its backward).
    # The head's backward makes the grad wrt its input (256 KiB) and its weight grad (1 KiB) before the
    # layer's backward begins: forward_backward peak 513 KiB (+ scalars and the 4 KiB head output).
    # layers_backward starts from that, and threshold_backward adds 256 KiB: 769 KiB.
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.ReLU())
    head = torch.nn.Linear(128, 2, bias=False)
    x = torch.randn(512, 128, requires_grad=True)
    with TensorMemory(split_at=[layer]) as mem:
        head(layer(x)).sum().backward()
    kib = 1024
    assert set(mem.peaks) == {"forward_backward", "layers_backward"}
    assert abs(mem.peaks["forward_backward"] - 513 * kib) <= 5 * kib
    assert abs(mem.peaks["layers_backward"] - 769 * kib) <= 5 * kib
