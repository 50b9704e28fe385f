# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""STViT in Hugging Face transformers through timm: ``TimmBackbone``
(``AutoBackbone``) and a DETR detector with ``use_timm_backbone=True``.
transformers builds timm models by name, so ``import mmstvit.timm`` must
come first (without it transformers says the backbone is not in timm)."""
import re
import subprocess
import sys

import torch
from helpers import REPO

import mmstvit.timm  # noqa: F401  (registers stvit_* with timm)


def test_timm_backbone_returns_the_four_maps():
    from transformers import AutoBackbone, TimmBackboneConfig
    config = TimmBackboneConfig(backbone='stvit_small', out_indices=(0, 1, 2, 3),
                                use_pretrained_backbone=False)
    backbone = AutoBackbone.from_config(config).eval()
    assert backbone.channels == [64, 128, 320, 512]
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        out = backbone(x)
        maps = backbone._backbone.model.backbone(x)
    assert [m.shape for m in out.feature_maps] == [m.shape for m in maps]
    for a, b in zip(out.feature_maps, maps):
        assert torch.equal(a, b)
    # freeze_batch_norm_2d=True: timm's FrozenBatchNorm2d, the same maps
    frozen = AutoBackbone.from_config(TimmBackboneConfig(
        backbone='stvit_small', out_indices=(0, 1, 2, 3),
        use_pretrained_backbone=False, freeze_batch_norm_2d=True)).eval()
    frozen.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        for a, b in zip(frozen(x).feature_maps, out.feature_maps):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def detr(**backbone_kwargs):
    from transformers import DetrConfig, DetrForObjectDetection
    config = DetrConfig(
        use_timm_backbone=True, backbone='stvit_small',
        use_pretrained_backbone=False,
        backbone_kwargs=dict(out_indices=(1, 2, 3), stoken_size=(16, 8, 2, 1),
                             **backbone_kwargs),
        num_queries=8, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=3)
    return DetrForObjectDetection(config)


def test_detr_trains_a_step_with_stvit():
    """DETR (tiny transformer) on the dense-prediction STViT-S: one
    training step on a toy image, a finite loss, gradients in the
    backbone; then inference."""
    torch.manual_seed(0)
    model = detr().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixel_values = torch.rand(1, 3, 128, 96)
    labels = [dict(class_labels=torch.tensor([1, 2]),
                   boxes=torch.tensor([[0.3, 0.4, 0.2, 0.3],
                                       [0.7, 0.6, 0.3, 0.2]]))]
    out = model(pixel_values=pixel_values, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    backbone = model.model.backbone.conv_encoder.model
    grads = [p.grad for n, p in backbone.named_parameters()
             if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all()
                         for g in grads)
    first = dict(backbone.named_parameters())[
        'model.backbone.patch_embed.proj.0.weight']
    assert first.grad.abs().sum() > 0
    optimizer.step()
    # DETR swaps every BatchNorm2d for its DetrFrozenBatchNorm2d, which the
    # fast plan's eval-time BatchNorm folding cannot read (no eps): DETR's
    # inference runs the backbone with kernels='plain'
    # (docs/timm_huggingface.md)
    plain = detr(kernels='plain').eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = plain(pixel_values=pixel_values).logits
    assert logits.shape == (1, 8, 4) and torch.isfinite(logits).all()


def test_official_weights_reach_the_hf_models(tmp_path):
    """An official-format .pth: TimmBackbone loads it through timm
    (use_pretrained_backbone=True, the file as a timm keyword); DETR's
    constructor re-initialises its timm backbone (as for timm's own
    models), so the file is loaded into the built detector's backbone."""
    import argparse

    import timm
    from transformers import AutoBackbone, TimmBackboneConfig
    src = timm.create_model('stvit_small')
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)
    official = {re.sub(r'^head\.fc\.', 'head.',
                       re.sub(r'^head\.(proj|norm)\.', r'\1.',
                              re.sub(r'^backbone\.', '', k))): v.contiguous()
                for k, v in src.state_dict().items()}
    path = str(tmp_path / 'stvit-small-224.pth')
    torch.save(dict(model=official, epoch=299,
                    args=argparse.Namespace(model='stvit_small')), path)
    expected = src.backbone.state_dict()

    backbone = AutoBackbone.from_config(
        TimmBackboneConfig(backbone='stvit_small', out_indices=(1, 2, 3),
                           use_pretrained_backbone=True),
        pretrained_cfg_overlay=dict(file=path))
    got = backbone._backbone.model.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())

    model = detr()
    stvit = model.model.backbone.conv_encoder.model.model
    stvit.load_pretrained(path)
    got = stvit.backbone.state_dict()  # DETR's frozen BatchNorms included
    assert sum(torch.equal(got[k], v) for k, v in expected.items()
               if k in got) == len(got) > 0


def test_without_the_import_transformers_names_the_missing_model():
    """The documented failure: TimmBackbone looks the name up in timm's
    registry, which only ``import mmstvit.timm`` fills."""
    code = ('from transformers import AutoBackbone, TimmBackboneConfig\n'
            'AutoBackbone.from_config(TimmBackboneConfig('
            'backbone="stvit_small", use_pretrained_backbone=False))')
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    # transformers' own check, or timm's (which comes first in some 4.x)
    assert re.search(r'stvit_small is not supported by timm|'
                     r'Unknown model \(stvit_small\)', r.stderr), r.stderr


def test_mmpretrain_models_import_beside_this_transformers():
    """mmpretrain 1.2's BLIP needs transformers' apply_chunking_to_forward,
    which transformers 5 removed: requirements/tests.txt keeps it below 5."""
    code = 'import mmpretrain.models, transformers; print(transformers.__version__)'
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().split('\n')[-1].startswith('4.')
