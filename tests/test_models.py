import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cnn.models import build_model, count_parameters, default_lr, model_names


def test_tutorial_net_has_the_tutorials_62006_parameters():
    assert count_parameters(build_model("tutorial")) == 62_006


def test_resnet18_is_the_cifar_variant():
    model = build_model("resnet18")
    assert 11_100_000 < count_parameters(model) < 11_300_000
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def training_flops(name):
    model = build_model(name)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    return counter.get_total_flops()


def test_tutorial_wide_has_at_least_50x_the_training_flops():
    ratio = training_flops("tutorial-wide") / training_flops("tutorial")
    assert ratio >= 50, ratio


@pytest.mark.parametrize("name", model_names())
def test_same_seed_gives_bit_identical_weights(name):
    a, b = build_model(name, seed=3), build_model(name, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = build_model(name, seed=4)
    assert not torch.equal(a.state_dict()["conv1.weight"], c.state_dict()["conv1.weight"])


def test_building_a_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("tutorial", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_model_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown model 'lenet'.*tutorial"):
        build_model("lenet")


def test_default_lr_is_the_tutorials_at_batch_4_and_scales_linearly_with_a_cap():
    assert default_lr("tutorial", 4) == pytest.approx(1e-3)
    assert default_lr("tutorial", 32) == pytest.approx(8e-3)
    assert default_lr("tutorial", 4096) == pytest.approx(0.02)


@pytest.mark.cuda
@pytest.mark.parametrize("name", model_names())
def test_initial_weights_are_identical_on_cpu_and_cuda(name):
    cpu = build_model(name, seed=1)
    gpu = build_model(name, seed=1).to("cuda")
    for (k, v), (_, w) in zip(cpu.state_dict().items(), gpu.state_dict().items()):
        assert torch.equal(v, w.cpu()), k
