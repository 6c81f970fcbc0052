import functools
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cnn.models import (
    FAMILY_WIDTHS,
    ModelError,
    build_model,
    check_model,
    count_parameters,
    default_lr,
    is_user_model,
    model_names,
    parameter_count,
    recipe_model,
)


def test_tutorial_net_has_the_tutorials_62006_parameters():
    assert count_parameters(build_model("tutorial")) == 62_006


def test_resnet18_is_the_cifar_variant():
    model = build_model("resnet18")
    assert 11_100_000 < count_parameters(model) < 11_300_000
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@functools.cache  # the family's widest member costs a second or two to build and count
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


# ---- the width family -------------------------------------------------------------------
# Hand-derived for width k (one 3x32x32 image; FlopCounterMode counts 2 FLOPs per multiply-
# add; a training step is forward + backward, the backward twice the forward except conv1,
# whose input needs no gradient):
#   conv1 3->6k 5x5 on 28x28: 2*28*28*6k*3*25 = 705,600k forward, as much again backward
#   conv2 6k->16k 5x5 on 10x10: 480,000k^2 forward, x3 in all
#   fc1 400k->120k: 96,000k^2; fc2 120k->84k: 20,160k^2; fc3 84k->10: 1,680k; each x3
# total = 1,788,480 k^2 + 1,416,240 k   (k=1: 3,204,720)
# parameters = 60,480 k^2 + 1,516 k + 10  (k=1: the tutorial's 62,006)

def family_flops(k):
    return 1_788_480 * k * k + 1_416_240 * k


def family_parameters(k):
    return 60_480 * k * k + 1_516 * k + 10


@pytest.mark.parametrize("width", FAMILY_WIDTHS)
def test_family_flops_and_parameters_match_the_hand_count(width):
    name = f"tutorial-w{width}"
    assert training_flops(name) // 2 == family_flops(width)
    assert count_parameters(build_model(name)) == family_parameters(width)
    assert parameter_count(name) == family_parameters(width)


def test_family_flops_grow_about_quadratically_and_span_nearly_three_orders_of_magnitude():
    flops = [training_flops(f"tutorial-w{w}") for w in FAMILY_WIDTHS]
    ratios = [b / a for a, b in zip(flops, flops[1:])]  # doubling the width
    assert all(3.0 < r <= 4.0 for r in ratios), ratios  # -> 4 as the k^2 terms dominate
    assert ratios == sorted(ratios)
    assert flops[-1] / flops[0] > 500  # 1.88 GFLOP vs 3.2 MFLOP: 586x


def test_w1_is_the_tutorial_net_exactly():
    a, b = build_model("tutorial", seed=7), build_model("tutorial-w1", seed=7)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", ["tutorial-w8", "examples/my_model.py:build"])
def test_family_and_user_models_take_the_tutorials_recipe(name):
    assert recipe_model(name) == "tutorial"
    assert default_lr(name, 32) == default_lr("tutorial", 32)
    assert recipe_model("resnet18") == "resnet18"


# ---- user models ------------------------------------------------------------------------

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "my_model.py") + ":build"


def test_a_user_model_from_a_file_outside_the_package_builds_seeded():
    a, b = build_model(EXAMPLE, seed=3), build_model(EXAMPLE, seed=3)
    assert all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model(EXAMPLE, seed=4)
    assert not all(torch.equal(v, w) for v, w in zip(a.state_dict().values(), c.state_dict().values()))
    assert a(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    check_model(EXAMPLE)
    assert parameter_count(EXAMPLE) == 24_346


def test_a_user_model_as_a_module_on_the_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(EXAMPLE.rsplit(":", 1)[0]).parent))
    check_model("my_model:build")
    assert count_parameters(build_model("my_model:build")) == 24_346


USER_MODULE = '''
import torch
from torch import nn

NOT_CALLABLE = 3

def not_a_module():
    return "a string"

def wrong_shape():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))

def does_not_fit():
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))  # an MNIST model

def needs_arguments(classes):
    return nn.Linear(1, classes)

def good():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_models.py"
    path.write_text(USER_MODULE)
    return str(path)


@pytest.mark.parametrize("attr,message", [
    ("missing", "has no attribute 'missing'"),
    ("NOT_CALLABLE", "'NOT_CALLABLE' is a int, not callable"),
    ("not_a_module", "returned a str, not a torch.nn.Module"),
    ("wrong_shape", "gave output (2, 7) for a batch of 2 images; expected (2, 10) logits"),
    ("does_not_fit", "does not fit a batch of 2x3x32x32 images: the forward pass raised RuntimeError"),
    ("needs_arguments", "calling it raised TypeError"),
])
def test_bad_user_models_are_refused_in_one_line(user_file, attr, message):
    with pytest.raises(ModelError) as e:
        check_model(f"{user_file}:{attr}")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert repr(f"{user_file}:{attr}") in str(e.value)


def test_a_good_user_model_passes(user_file):
    check_model(f"{user_file}:good")


@pytest.mark.parametrize("name,message", [
    ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    ("/no/such/file.py:build", "no such file '/no/such/file.py'"),
    ("lenet", "unknown model 'lenet'"),
])
def test_missing_modules_and_names_are_refused(name, message):
    with pytest.raises(ModelError, match=message):
        build_model(name)


def test_is_user_model_takes_modules_and_files_only():
    assert is_user_model("pkg.mod:build") and is_user_model("a/b.py:make.net")
    assert not is_user_model("tutorial") and not is_user_model("pkg mod:build") and not is_user_model("pkg:")
