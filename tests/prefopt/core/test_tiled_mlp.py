"""Sequence-tiled MLP (prefopt.core.tiled_mlp): equal outputs and gradients, less memory, clear errors."""
import pytest
import torch

from prefopt.core.models import make_tiny_model
from prefopt.core.tiled_mlp import TiledMLPFunction, enable_tiled_mlp, tiled_mlp_modules


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiled_mlp_model_equals_untiled_loss_and_every_gradient(checkpointing):
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 23))  # 46 tokens: tiles of 8 leave a short last tile
    plain = make_tiny_model("tiny-llama", seed=0)
    tiled = enable_tiled_mlp(make_tiny_model("tiny-llama", seed=0), 8)
    for m in (plain, tiled):
        m.train()
        if checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_p, grads_p = _loss_and_grads(plain, ids)
    loss_t, grads_t = _loss_and_grads(tiled, ids)
    torch.testing.assert_close(loss_t, loss_p, rtol=1e-6, atol=0)  # the same per-row computation
    assert grads_p.keys() == grads_t.keys() and len(grads_p) == len(list(plain.parameters()))
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_t[name], g, rtol=1e-5, atol=1e-7, msg=name)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in tiled.named_parameters()]


def test_function_keeps_only_its_input_and_sums_parameter_grads_over_tiles():
    # y = relu(x W^T) with x: 12 x 4 in tiles of 5 (5 + 5 + 2 rows). Hand form: dW = relu'(xW^T)^T-weighted
    # sum over all rows = (g * (xW^T > 0))^T x, equal to the untiled autograd result; the forward saves x
    # and W only (no 12 x 3 pre-activation).
    torch.manual_seed(1)
    w = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(12, 4, requires_grad=True)
    g = torch.randn(12, 3)
    fn = lambda t: torch.relu(t @ w.t())  # noqa: E731
    y = TiledMLPFunction.apply(fn, 5, x, w)
    assert len(y.grad_fn.saved_tensors) == 2
    y.backward(g)
    pre = x.detach() @ w.detach().t()
    torch.testing.assert_close(w.grad, (g * (pre > 0)).t() @ x.detach())
    torch.testing.assert_close(x.grad, (g * (pre > 0)) @ w.detach())
    torch.testing.assert_close(y.detach(), torch.relu(pre))


def test_no_grad_and_short_inputs_run_the_plain_forward_and_errors_name_the_setting():
    model = enable_tiled_mlp(make_tiny_model("tiny-llama", seed=0), 64)
    mlps = tiled_mlp_modules(model)
    assert len(mlps) == model.config.num_hidden_layers
    x = torch.randn(1, 10, model.config.hidden_size, requires_grad=True)
    assert mlps[0](x).grad_fn.name() != "TiledMLPFunctionBackward"  # 10 tokens fit one tile
    enable_tiled_mlp(model, 4)  # re-enabling wraps the original forward, not the tiled one
    assert mlps[0](x).grad_fn.name() == "TiledMLPFunctionBackward"
    with torch.no_grad():
        assert mlps[0](x).grad_fn is None
    with pytest.raises(ValueError, match="tiled_mlp_tokens must be >= 1"):
        enable_tiled_mlp(model, 0)
    with pytest.raises(ValueError, match="has no decoder layer with an `mlp`"):
        enable_tiled_mlp(torch.nn.Linear(2, 2), 8)


def test_model_config_turns_it_on_and_run_configs_reject_it_with_zero3():
    from prefopt.configs import TrainConfig
    from prefopt.core.backend import BackendConfig
    from prefopt.core.models import ModelConfig, load_model
    from reward_models.config import RMTrainConfig

    model, _ = load_model(ModelConfig(name="tiny-llama", tiled_mlp_tokens=8))
    x = torch.randn(1, 9, model.config.hidden_size, requires_grad=True)
    assert all(m(x).grad_fn.name() == "TiledMLPFunctionBackward" for m in tiled_mlp_modules(model))
    with pytest.raises(ValueError, match="model.tiled_mlp_tokens must be >= 1 or null, got 0"):
        ModelConfig(name="tiny-llama", tiled_mlp_tokens=0)
    cfg = {"model": ModelConfig(name="tiny-llama", tiled_mlp_tokens=8),
           "backend": BackendConfig(kind="deepspeed", zero_stage=3)}
    for root in (TrainConfig, RMTrainConfig):
        with pytest.raises(ValueError, match="cannot be combined with backend.zero_stage 3"):
            root(**cfg)
        root(model=cfg["model"], backend=BackendConfig(kind="deepspeed", zero_stage=2))  # accepted


def test_tiled_forward_keeps_no_intermediate_hand_count():
    # Llama MLP down(silu(gate(x)) * up(x)), N tokens, hidden H, intermediate I, fp32. After the plain
    # forward the graph holds gate(x) (silu's input), silu's output and up(x) (mul's inputs) and the
    # product (down's input): 4 N I floats, plus the output N H. The tiled forward holds the output only.
    from benchmarks.tensor_memory import TensorMemory

    model = make_tiny_model("tiny-llama", seed=0)
    mlp = tiled_mlp_modules(model)[0]
    n, h, i = 40, model.config.hidden_size, model.config.intermediate_size
    x = torch.randn(1, n, h, requires_grad=True)
    with TensorMemory() as plain:
        y_plain = mlp(x)
    enable_tiled_mlp(model, 16)
    with TensorMemory() as tiled:
        y_tiled = mlp(x)
    assert plain.current == 4 * (4 * n * i + n * h)
    assert tiled.current == 4 * n * h
    torch.testing.assert_close(y_tiled, y_plain, rtol=1e-6, atol=0)


def test_lora_adapters_in_the_mlp_get_the_same_gradients_tiled():
    from prefopt.core.models import LoraSettings, ModelConfig, load_model

    lora = LoraSettings(r=4, alpha=8.0, dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 21))
    grads = []
    for tokens in (None, 8):
        torch.manual_seed(1)  # the adapters' initialisation draws from the global generator
        model, _ = load_model(ModelConfig(name="tiny-llama", lora=lora, tiled_mlp_tokens=tokens))
        for n, p in model.named_parameters():  # adapters start at B = 0; give them a gradient path
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(n)))
        model.train()
        grads.append(_loss_and_grads(model, ids)[1])
    assert grads[0].keys() == grads[1].keys() and all("lora_" in n for n in grads[0]) and len(grads[0]) > 0
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_offline_dpo_step_in_the_shared_prompt_layout_is_unchanged_by_tiling(tmp_path):
    """Through the training loop's own step (shared-prompt rows, segment attention, completion-only
    head, activation checkpointing): the DPO loss and every gradient equal the untiled step's."""
    from data_pipelines.tokenize import TokenizedPair
    from prefopt.algorithms import get_algorithm
    from prefopt.configs import TrainConfig
    from prefopt.core.config import from_dict
    from prefopt.loops.offline import _build_context
    from prefopt.loops.offline_data import Item
    from prefopt.loops.offline_step import pairwise_loss

    cfg = from_dict(TrainConfig, {"algorithm": "dpo", "model": {"name": "tiny-llama"},
                                  "run": {"output_dir": str(tmp_path)}})
    g = torch.Generator().manual_seed(0)
    ids = lambda k: tuple(int(t) for t in torch.randint(3, 1000, (k,), generator=g))  # noqa: E731
    items = [Item(TokenizedPair(ids(9 + i), ids(4 + i) + (2,), ids(6 - i) + (2,)), i) for i in range(3)]
    tok = type("Tok", (), {"pad_token_id": 2})()
    backend = type("Backend", (), {"device": torch.device("cpu")})()
    out = []
    for tiles in (None, 4):
        model = make_tiny_model("tiny-llama", seed=0)
        with torch.no_grad():  # policy != reference, so the loss is not at its symmetric point
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if tiles:
            enable_tiled_mlp(model, tiles)
        model.train()
        ctx = _build_context(cfg, get_algorithm("dpo"), model, tok, backend)
        assert ctx.layout == "shared_prompt"
        loss = pairwise_loss(ctx, model, items).loss.mean()
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-6, atol=1e-7)
    assert out[0][1].keys() == out[1][1].keys() and out[0][1]
    for name, grad in out[0][1].items():
        torch.testing.assert_close(out[1][1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
