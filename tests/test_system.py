from bench.system import inference_flops_per_image, training_flops_per_image


def test_inference_flops_of_the_tutorial_net_by_hand():
    # 2 FLOPs per multiply-add: conv1 6x3x5x5 at 28x28, conv2 16x6x5x5 at 10x10, fc 400-120-84-10
    macs = 6 * 3 * 25 * 28 * 28 + 16 * 6 * 25 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10
    assert inference_flops_per_image("tutorial") == 2 * macs == 1_303_440


def test_training_costs_about_three_forward_passes():
    # backward = input gradients + weight gradients, each about one forward; the first conv
    # needs no input gradient, so a little under 3x
    for name in ("tutorial", "resnet18"):
        ratio = training_flops_per_image(name) / inference_flops_per_image(name)
        assert 2.3 < ratio <= 3.0, (name, ratio)
