"""The auxiliary FCN head (`model.aux_head`): every smp architecture, the loss, checkpoints, and runs without it."""

import copy

import numpy as np
import pytest
import torch
from tiny_models import NUM_CLASSES, TINY, input_size, tiny_model

from segdist.config import DataConfig
from segdist.data.augment import augment, eval_input, train_transform
from segdist.models import ModelOptionError, check_model
from segdist.models.aux_head import AUX_HEAD, remove_aux_head
from segdist.models.losses import AuxLoss, build_loss

SMP_ARCHS = [arch for arch in TINY if arch != "resunet_attention"]


@pytest.mark.parametrize("arch", SMP_ARCHS)
def test_every_smp_architecture_returns_main_and_aux_logits_in_training_and_only_the_logits_in_eval(arch):
    torch.manual_seed(0)
    model = tiny_model(arch, aux_head=True)
    h, w = input_size(arch)
    image = torch.randn(2, 3, h, w)
    main, aux = model.train()(image)
    assert main.shape == aux.shape == (2, NUM_CLASSES, h, w)
    with torch.no_grad():
        logits = model.eval()(image)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES, h, w)
    assert getattr(model, AUX_HEAD)._features is None  # nothing held between forwards
    encoder, _, arch_kwargs = TINY[arch]
    check_model(arch, encoder, arch_kwargs=arch_kwargs, input_shape=(2, 3, h, w), aux_head=True)


def test_resunet_attention_refuses_an_aux_head():
    with pytest.raises(ModelOptionError, match="auxiliary head") as caught:
        tiny_model("resunet_attention", aux_head=True)
    assert caught.value.option == "aux_head"
    with pytest.raises(ModelOptionError):
        check_model("resunet_attention", "base8", aux_head=True)


@pytest.mark.parametrize("arch", ["unet", "segformer", "dpt"])
def test_state_dict_keys_without_an_aux_head_are_unchanged_and_the_head_adds_only_aux_head_keys(arch):
    plain = set(tiny_model(arch).state_dict())
    with_aux = tiny_model(arch, aux_head=True)
    assert set(tiny_model(arch, aux_head=False).state_dict()) == plain
    assert not any(key.startswith(AUX_HEAD) for key in plain)
    extra = set(with_aux.state_dict()) - plain
    assert plain <= set(with_aux.state_dict()) and extra and all(key.startswith(f"{AUX_HEAD}.") for key in extra)
    assert set(remove_aux_head(with_aux).state_dict()) == plain


def test_the_aux_head_adds_its_weighted_loss_and_gets_gradients():
    torch.manual_seed(0)
    model = tiny_model("unet", aux_head=True).train()
    image, target = torch.randn(2, 3, 64, 96), torch.randint(0, NUM_CLASSES, (2, 64, 96))
    target[0, :8] = 255
    loss = build_loss("ce", NUM_CLASSES)
    torch.manual_seed(1)
    main, aux = model(image)
    total = AuxLoss(loss, 0.4)((main, aux), target)
    torch.testing.assert_close(total, loss(main, target) + 0.4 * loss(aux, target))
    assert not torch.isclose(total, loss(main, target))
    total.backward()
    head = getattr(model, AUX_HEAD)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert AuxLoss(loss, 0.4)(main, target) == loss(main, target)  # plain logits (eval): the loss alone


def test_a_deep_copy_such_as_the_ema_uses_its_own_head():
    model = tiny_model("unet", aux_head=True).train()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in getattr(twin, AUX_HEAD).parameters():
            p.zero_()
    torch.manual_seed(0)
    _, aux = twin(torch.randn(1, 3, 64, 96))
    assert torch.count_nonzero(aux) == 0  # the copy's zeroed head, not the original's
    assert getattr(model, AUX_HEAD)._features is None


def test_remove_aux_head_leaves_the_plain_model():
    model = tiny_model("fpn", aux_head=True)
    remove_aux_head(model)
    assert not hasattr(model, AUX_HEAD) and not model._forward_hooks and not model.encoder._forward_hooks
    assert isinstance(model.train()(torch.randn(2, 3, 64, 96)), torch.Tensor)


def test_resize_side_short_sets_the_short_side_in_eval_input():
    rgb = np.zeros((100, 300, 3), np.uint8)
    assert tuple(eval_input(rgb, 50, "short").shape) == (3, 50, 150)
    assert tuple(eval_input(rgb, 50).shape) == (3, 17, 50)  # the long side, as before


def test_resize_side_short_sets_the_short_side_before_the_training_scale_and_crop():
    cfg = DataConfig(crop_size=[50, 150], base_size=50, resize_side="short", scale_range=[1.0, 1.0], hflip=0.0)
    image, label = np.full((100, 300, 3), 7, np.uint8), np.ones((100, 300), np.uint8)
    out_image, out_label = augment(train_transform(cfg, 255), image, label, 0)
    assert tuple(out_image.shape) == (3, 50, 150) and bool((out_label == 1).all())  # nothing padded


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster):
    from helpers import synthetic_shards

    return synthetic_shards(tmp_path_factory.mktemp("aux"), images=8, val_images=4, seed=11, width=80, height=60)


@pytest.mark.slow
def test_a_run_trained_with_an_aux_head_predicts_and_exports_the_outputs_of_a_plain_run(shards, tmp_path):
    import onnx
    from helpers import run_cli, run_train
    from safetensors.torch import load_file

    from segdist.runs.run import load_run

    common = ["train.max_steps=2", "data.workers=0", "data.resize_side=short", "data.base_size=64",
              "data.val_size=64"]
    run_train(shards, tmp_path, *common, "train.name=aux", "model.aux_head=0.4", "train.ema_decay=0.9")
    run_train(shards, tmp_path, *common, "train.name=plain")
    outputs = {}
    for name in ("aux", "plain"):
        run = load_run(tmp_path / name)
        assert not hasattr(run.model, AUX_HEAD) and run.resize_side == "short"
        saved = load_file(str(run.checkpoint))  # the EMA's weights for "aux": they keep the head too
        assert any(key.removeprefix("module.").startswith(f"{AUX_HEAD}.") for key in saved) == (name == "aux")
        classes = run.predict(np.full((60, 80, 3), 128, np.uint8), device="cpu")
        assert classes.shape == (60, 80)
        out = tmp_path / f"{name}.onnx"
        run_cli("export", "--run", tmp_path / name, "--format", "onnx", "--out", out)
        outputs[name] = [o.name for o in onnx.load(str(out)).graph.output]
    assert outputs["aux"] == outputs["plain"] == ["logits"]
