import pytest
import torch

from medpipe.config import load_config
from medpipe.models import ResNet18Classifier, build_model, param_groups, unfreeze_for_epoch


@pytest.mark.parametrize("name", ["custom_cnn", "resnet18"])
def test_models_take_raw_single_channel_pixels(name):
    cfg = load_config(None, ["models.resnet18.weights=none"])
    model = build_model(name, cfg, 3).eval()
    for size in (32, 64):
        out = model(torch.rand(2, 1, size, size) * 255)
        assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="Invalid model 'vgg'. Only custom_cnn and resnet18"):
        build_model("vgg", load_config(), 3)


def _fake_pretrained(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def test_weights_from_path_and_progressive_unfreezing(tmp_path):
    path = _fake_pretrained(tmp_path)
    cfg = load_config(None, [f"models.resnet18.weights={path}"])
    model = build_model("resnet18", cfg, 3)
    assert isinstance(model, ResNet18Classifier) and model.pretrained
    assert unfreeze_for_epoch(model, 0, 5) == []
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert unfreeze_for_epoch(model, 5, 5) == ["layer4"]
    assert all(p.requires_grad for p in model.backbone.layer4.parameters())
    assert not any(p.requires_grad for p in model.backbone.layer3.parameters())
    assert unfreeze_for_epoch(model, 10, 5) == ["layer4", "layer3"]
    assert len(unfreeze_for_epoch(model, 100, 5)) == 5
    groups = {g["name"]: g["lr"] for g in param_groups(model, cfg)}
    assert groups == {"backbone": 1e-4, "head": 1e-3}


def test_random_init_trains_whole_backbone():
    cfg = load_config(None, ["models.resnet18.weights=none"])
    model = build_model("resnet18", cfg, 3)
    assert len(unfreeze_for_epoch(model, 0, 5)) == 5
    assert all(p.requires_grad for p in model.parameters())


def test_missing_weights_file_is_named(tmp_path):
    cfg = load_config(None, [f"models.resnet18.weights={tmp_path / 'missing.pth'}"])
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        build_model("resnet18", cfg, 3)


def test_imagenet_without_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cfg = load_config(None, ["models.resnet18.weights=imagenet"])
    try:
        build_model("resnet18", cfg, 3)
    except RuntimeError as exc:  # no network (CI, this sandbox): the message must say exactly what to do
        message = str(exc)
        assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch-home") in message
        assert "weights=none" in message
    else:  # a machine with network downloads the real weights: that is fine too
        pass


def test_run_checks_pretrained_weights_before_validating_or_training(tmp_path):
    from medpipe_testdata import write_dataset

    from medpipe.stages import run_pipeline

    data = write_dataset(tmp_path / "data", per_class=2, size=32)
    cfg = load_config(None, ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
                             f"models.resnet18.weights={tmp_path / 'missing.pth'}"])
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        run_pipeline(data, cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # nothing was started
    # A run without resnet18 does not need its weights.
    only_cnn = load_config(None, ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}",
                                  f"models.resnet18.weights={tmp_path / 'missing.pth'}", "models.names=[custom_cnn]",
                                  "train.epochs=1"])
    assert run_pipeline(data, only_cnn, tmp_path / "run").is_file()


@pytest.mark.parametrize("name", ["custom_cnn", "resnet18"])
def test_logit_offset_applies_in_eval_only_and_old_states_load(name):
    import torch

    from medpipe.models import load_model_state

    cfg = load_config(None, ["models.resnet18.weights=none"])
    model = build_model(name, cfg, 3).eval()
    x = torch.rand(2, 1, 32, 32) * 255
    with torch.no_grad():
        raw = model(x)
        model.logit_offset.offset.copy_(torch.tensor([3.0, -0.5, -1.0]))
        shifted = model(x)
    torch.testing.assert_close(shifted - raw, torch.tensor([[3.0, -0.5, -1.0]] * 2))
    assert torch.equal(model.logit_offset.train()(raw), raw)  # training sees the raw logits
    # A state dict from before the offset existed loads, with a zero offset.
    old_state = {k: v for k, v in model.state_dict().items() if not k.endswith("logit_offset.offset")}
    fresh = build_model(name, cfg, 3)
    fresh.logit_offset.offset.fill_(9.0)
    load_model_state(fresh, old_state)
    assert torch.equal(fresh.logit_offset.offset, torch.zeros(3))
