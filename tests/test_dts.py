"""DTS encoder: math against an independent channels-first float64 implementation in the released code's style,
released parameter names and layout, and the ReCoT / SGM pieces."""

import math

import pytest
import torch
import torch.nn.functional as F

from vxlp_model.config import VideoXLProConfig
from vxlp_model.dts import DTSEncoder, ReCoTDecoder, SemanticGuidedMasking, frames_to_groups, groups_to_frames


def _cfg(**kw):
    base = dict(dts_grid=4, dts_norm_groups=4, dts_max_relative_position=2)
    base.update(kw)
    return VideoXLProConfig.tiny(**base)


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (fan_in**-0.5 if p.dim() > 1 else 0.3))


# ----------------------------------------------------------------------------- independent float64 reference
def _gn(x, weight, bias, groups, eps):
    return F.group_norm(x, groups, weight, bias, eps)


def _spatial_ref(x, m, groups, eps):
    # x [G, C, T, H, W] channels-first, as the released AttnBlock3D
    g, c, t, h, w = x.shape
    hn = _gn(x, m.norm.weight.double(), m.norm.bias.double(), groups, eps)
    q = F.conv3d(hn, m.q.weight.double(), m.q.bias.double())
    k = F.conv3d(hn, m.k.weight.double(), m.k.bias.double())
    v = F.conv3d(hn, m.v.weight.double(), m.v.bias.double())
    out = torch.zeros_like(x)
    for gi in range(g):
        for ti in range(t):
            qq = q[gi, :, ti].reshape(c, h * w).T
            kk = k[gi, :, ti].reshape(c, h * w).T
            vv = v[gi, :, ti].reshape(c, h * w).T
            a = torch.softmax(qq @ kk.T / math.sqrt(c), dim=-1) @ vv
            out[gi, :, ti] = a.T.reshape(c, h, w)
    return x + F.conv3d(out, m.proj_out.weight.double(), m.proj_out.bias.double())


def _temporal_ref(x, m, groups, eps, transposed):
    g, c, t, h, w = x.shape
    seq = x.permute(0, 3, 4, 1, 2).reshape(g * h * w, c, t)  # [B, C, T] per position
    hn = F.group_norm(seq, groups, m.norm.weight.double(), m.norm.bias.double(), eps)
    qkv = F.conv1d(hn, m.qkv.weight.double(), m.qkv.bias.double())
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    s = c ** -0.25
    q, k = q * s, k * s
    rk = m.relative_position_k.embeddings_table.double()
    rv = m.relative_position_v.embeddings_table.double()
    r = (rk.shape[0] - 1) // 2
    out = torch.zeros_like(v)
    for i in range(t):
        wts = []
        for j in range(t):
            val = (q[:, :, i] * k[:, :, j]).sum(1)
            if transposed:
                val = val + (q[:, :, j] * rk[max(-r, min(r, i - j)) + r]).sum(1)
            else:
                val = val + (q[:, :, i] * rk[max(-r, min(r, j - i)) + r]).sum(1)
            wts.append(val)
        p = torch.softmax(torch.stack(wts, 1), dim=1)
        for j in range(t):
            out[:, :, i] += p[:, j, None] * (v[:, :, j] + rv[max(-r, min(r, j - i)) + r])
    proj = F.conv1d(out, m.proj_out.weight.double(), m.proj_out.bias.double())  # released: Conv1d with a bias
    res = seq + proj
    return res.reshape(g, h, w, c, t).permute(0, 3, 4, 1, 2)


def _merge_ref(x, m):
    xp = F.pad(x, (1, 1, 1, 1, 1, 0), mode="replicate")
    return F.conv3d(xp, m.conv.weight.double(), m.conv.bias.double(), stride=(2, 1, 1))


def _dts_ref(x_cf, enc, cfg):
    x = x_cf.double() + enc.temporal_encoding.double().T[None, :, :, None, None]
    mods = list(enc.encoder)
    for i in range(0, len(mods), 3):
        x = _spatial_ref(x, mods[i], cfg.dts_norm_groups, cfg.dts_norm_eps)
        x = _temporal_ref(x, mods[i + 1], cfg.dts_norm_groups, cfg.dts_norm_eps, cfg.transposed_rel_k)
        x = _merge_ref(x, mods[i + 2])
    g, c = x.shape[:2]
    return x.reshape(g, c, -1).transpose(1, 2)  # [G, S, C]


@pytest.mark.parametrize("transposed", [False, True])
def test_dts_forward_matches_channels_first_reference(transposed):
    cfg = _cfg(transposed_rel_k=transposed)
    enc = DTSEncoder(cfg).double()
    _randomize(enc, seed=3)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.add_(1.0)
    g, c, hw = 2, cfg.dts_channels, cfg.dts_grid
    x_cf = torch.randn(g, c, 4, hw, hw, dtype=torch.float64)
    out = enc(x_cf.permute(0, 2, 3, 4, 1).contiguous())
    ref = _dts_ref(x_cf, enc, cfg)
    assert out.shape == (g, hw * hw, c)
    assert (out - ref).norm() / ref.norm() < 1e-10


def test_temporal_blocks_are_identity_at_init():
    cfg = _cfg()
    enc = DTSEncoder(cfg)
    x = torch.randn(2, 4, cfg.dts_grid, cfg.dts_grid, cfg.dts_channels)
    assert torch.equal(enc.encoder[1](x), x)


def test_released_parameter_names_and_shapes_real_config():
    cfg = VideoXLProConfig.real()
    with torch.device("meta"):
        enc = DTSEncoder(cfg)
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    c = 1152
    expected = {"temporal_encoding": (4, c)}
    for i in (0, 3):
        expected.update({f"encoder.{i}.norm.weight": (c,), f"encoder.{i}.norm.bias": (c,)})
        for n in ("q", "k", "v", "proj_out"):
            expected[f"encoder.{i}.{n}.weight"] = (c, c, 1, 1, 1)
            expected[f"encoder.{i}.{n}.bias"] = (c,)
    for i in (1, 4):
        expected.update(
            {
                f"encoder.{i}.norm.weight": (c,),
                f"encoder.{i}.norm.bias": (c,),
                f"encoder.{i}.qkv.weight": (3 * c, c, 1),
                f"encoder.{i}.qkv.bias": (3 * c,),
                f"encoder.{i}.relative_position_k.embeddings_table": (129, c),
                f"encoder.{i}.relative_position_v.embeddings_table": (129, c),
                f"encoder.{i}.proj_out.weight": (c, c, 1),
                f"encoder.{i}.proj_out.bias": (c,),
            }
        )
    for i in (2, 5):
        expected.update({f"encoder.{i}.conv.weight": (c, c, 3, 3, 3), f"encoder.{i}.conv.bias": (c,)})
    assert shapes == expected
    total = sum(math.prod(s) for s in shapes.values())
    assert total == 93_526_272  # RELEASED.md §2


def test_load_released_state_dict_synthetic():
    cfg = _cfg(token_layout="released", transposed_rel_k=True)
    src = DTSEncoder(cfg)
    _randomize(src, seed=7)
    released = {"model.sae." + k: v.clone() for k, v in src.state_dict().items()}
    released["model.layers.0.mlp.up_proj.weight"] = torch.zeros(2, 2)  # other parts of the checkpoint are ignored
    dst = DTSEncoder(cfg)
    dst.load_released_state_dict(released)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    x = torch.randn(1, 4, cfg.dts_grid, cfg.dts_grid, cfg.dts_channels)
    assert torch.equal(dst(x), src(x))
    assert "model.sae.encoder.1.proj_out.bias" in released  # the released temporal proj_out has a bias; loaded strictly
    bad = dict(released)
    bad.pop("model.sae.encoder.2.conv.bias")
    with pytest.raises(KeyError, match="encoder.2.conv.bias"):
        DTSEncoder(cfg).load_released_state_dict(bad)
    with pytest.raises(KeyError, match="model.sae."):
        DTSEncoder(cfg).load_released_state_dict({"x": torch.zeros(1)})


def test_released_token_layout_matches_view_quirk():
    g, c, side = 3, 8, 2
    feats = torch.randn(4 * g, side * side, c)
    grouped = frames_to_groups(feats, 4, "released")
    # the released code: feat [4G, C, H, W] contiguous, .view(G, C, 4, H, W)
    feat_cf = feats.transpose(1, 2).reshape(4 * g, c, side, side).contiguous()
    ref = feat_cf.view(g, c, 4, side, side).permute(0, 2, 3, 4, 1)
    assert torch.equal(grouped, ref)
    # the DTS "time" axis is channel mod 4: element (g, t', c') holds frame (4c'+t')//C, channel (4c'+t') % C
    gi, tp, cp, s = 1, 2, 5, 3
    f, ch = divmod(4 * cp + tp, c)
    assert grouped[gi, tp, s // side, s % side, cp] == feats[4 * gi + f, s, ch]
    assert torch.equal(groups_to_frames(grouped, "released"), feats)
    fm = frames_to_groups(feats, 4, "frame_major")
    assert torch.equal(fm[1, 2], feats[6].reshape(side, side, c))
    assert torch.equal(groups_to_frames(fm, "frame_major"), feats)
    with pytest.raises(ValueError, match="multiple of 4"):
        frames_to_groups(feats[:5], 4, "frame_major")


def test_recot_decoder_shapes_and_sgm():
    cfg = _cfg()
    dec = ReCoTDecoder(cfg)
    z = torch.randn(2, cfg.dts_grid**2, cfg.dts_channels)
    out = dec(z, cfg.dts_grid)
    assert out.shape == (2, 4, cfg.dts_grid, cfg.dts_grid, cfg.dts_channels)
    sgm = SemanticGuidedMasking(cfg)
    x = torch.randn(2, 4, cfg.dts_grid**2, cfg.dts_channels)
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    ratio, pool = 0.5, 0.75
    m1, mask1, s1 = sgm(x, ratio, pool, g1)
    m2, mask2, _ = sgm(x, ratio, pool, g2)
    assert torch.equal(mask1, mask2) and torch.equal(m1, m2)
    s = cfg.dts_grid**2
    assert (mask1.sum(-1) == int(math.floor(ratio * s + 0.5))).all()
    assert torch.equal(m1[mask1], sgm.mask_token.expand(int(mask1.sum()), -1))
    assert torch.equal(m1[~mask1], x[~mask1])
    # masked tokens come from the lowest-score pool
    n_pool = math.ceil(pool * s)
    ranks = torch.sort(s1, dim=-1, stable=True).indices.argsort(-1)
    assert (ranks[mask1] < n_pool).all()
