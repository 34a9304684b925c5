"""The network, weight sources and the model file."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from cardiomegaly import UserError
from cardiomegaly.model import (
    ARCHS,
    build_model,
    load_model,
    load_weights,
    read_metadata,
    save_model,
)

META = {"preprocessing": {"image_size": 75, "resize": "pad"},
        "threshold": {"value": 0.3, "rule": "youden"}}  # fmt: skip


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_returns_logits_in_train_and_eval_mode(arch):
    net = build_model(arch)
    x = torch.rand(2, 1, 75, 75)
    assert net.train()(x).shape == (2,)
    assert net.eval()(x).shape == (2,)


def test_auxiliary_logits_only_when_asked_and_training():
    net = build_model("inception_v3", aux_logits=True).train()
    logits, aux = net(torch.rand(2, 1, 299, 299), with_aux=True)
    assert logits.shape == aux.shape == (2,)
    assert net.eval()(torch.rand(2, 1, 299, 299)).shape == (2,)


def test_grey_input_is_replicated_and_normalised_inside_the_model():
    net = build_model("resnet50").eval()
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(grey), net(grey.expand(-1, 3, -1, -1)))


def test_frozen_parameters_and_batchnorm_statistics_do_not_move():
    torch.manual_seed(0)
    net = build_model("inception_v3")
    net.set_trainable(("Mixed_7",))
    frozen = {n: p.detach().clone() for n, p in net.net.named_parameters() if not p.requires_grad}
    stats = net.net.Conv2d_1a_3x3.bn.running_mean.clone()
    trained = net.net.Mixed_7c.branch1x1.conv.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2,
                                  weight_decay=0.1)  # fmt: skip
    net.train()
    loss = net(torch.rand(4, 1, 75, 75)).sum()
    loss.backward()
    optimizer.step()
    assert frozen and all(torch.equal(p, frozen[n]) for n, p in net.net.named_parameters()
                          if n in frozen)  # fmt: skip
    assert torch.equal(net.net.Conv2d_1a_3x3.bn.running_mean, stats)
    assert not torch.equal(net.net.Mixed_7c.branch1x1.conv.weight, trained)


def test_model_file_round_trip(tmp_path):
    net = build_model("inception_v3").eval()
    save_model(tmp_path / "m.safetensors", net, META)
    again, meta = load_model(tmp_path / "m.safetensors")
    assert meta["threshold"]["value"] == 0.3 and meta["architecture"]["name"] == "inception_v3"
    assert meta["format_version"] == 1
    x = torch.rand(2, 1, 75, 75)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_files_that_are_not_our_model_files_are_refused(tmp_path):
    random_bytes = tmp_path / "random.safetensors"
    random_bytes.write_bytes(bytes(range(256)) * 10)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign, metadata={"format": "pt"})
    net = build_model("resnet50")
    edited = tmp_path / "edited.safetensors"
    save_model(edited, net, META)
    header_len = int.from_bytes(edited.read_bytes()[:8], "little")
    header = json.loads(edited.read_bytes()[8 : 8 + header_len])
    inner = json.loads(header["__metadata__"]["cardiomegaly"])
    inner["format_version"] = 99
    header["__metadata__"]["cardiomegaly"] = json.dumps(inner)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    rest = edited.read_bytes()[8 + header_len :]
    edited.write_bytes(len(new_header).to_bytes(8, "little") + new_header + rest)
    for path, words in [
        (random_bytes, "not a safetensors model file"),
        (foreign, "not a cardiomegaly model file"),
        (edited, "format 99"),
        (tmp_path / "absent.safetensors", "not found"),
    ]:
        with pytest.raises(UserError, match=words):
            load_model(path)


def test_local_weights_file_loads_the_backbone_and_records_its_hash(tmp_path):
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / "my-resnet.pth")
    net = build_model("resnet50")
    info = load_weights(net, str(tmp_path / "my-resnet.pth"))
    assert info["source"] == "file" and len(info["sha256"]) == 64
    assert torch.equal(net.net.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_published_file_name_with_other_content_is_refused(tmp_path):
    fake = tmp_path / "resnet50-11ad3fa6.pth"  # torchvision's name, but not its bytes
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), fake)
    with pytest.raises(UserError, match="does not match torchvision's published 11ad3fa6"):
        load_weights(build_model("resnet50"), str(fake))


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r.pth")
    with pytest.raises(UserError, match="not densenet121 weights"):
        load_weights(build_model("densenet121"), str(tmp_path / "r.pth"))


def test_our_own_model_file_is_a_weight_source(tmp_path):
    first = build_model("resnet50")
    save_model(tmp_path / "m.safetensors", first, META)
    second = build_model("resnet50")
    info = load_weights(second, str(tmp_path / "m.safetensors"))
    assert info["source"] == "model file"
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_offline_imagenet_download_names_both_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UserError) as info:
        load_weights(build_model("inception_v3"), "imagenet")
    message = str(info.value)
    assert "--weights /path/to/inception_v3_google-0cc3c7bd.pth" in message
    assert "--weights none" in message and "\n" not in message


def test_metadata_reads_without_loading_weights(tmp_path):
    save_model(tmp_path / "m.safetensors", build_model("resnet50"), META)
    assert read_metadata(tmp_path / "m.safetensors")["preprocessing"]["image_size"] == 75
