"""The viseme network: causality with lookahead, streaming == whole sequence, batching of states."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engines.model import ModelConfig, VisemeNet, count_parameters, load_checkpoint, save_checkpoint  # noqa: E402
from engines.spec import N_MELS, N_VISEMES  # noqa: E402


def _model(**kw: object) -> VisemeNet:
    torch.manual_seed(0)
    return VisemeNet(ModelConfig(**kw)).eval()  # type: ignore[arg-type]


def _feats(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, N_MELS, generator=g) * 3.0 - 5.0


def test_shapes_and_probabilities() -> None:
    m = _model()
    x = _feats(2, 37)
    p, s = m(x, m.zero_state(2))
    assert p.shape == (2, 37, N_VISEMES)
    assert s.shape == (2, m.state_size)
    assert torch.allclose(p.sum(-1), torch.ones(2, 37), atol=1e-5)
    assert count_parameters(m) <= 1_000_000


NORMS = ["mean", "meanvar", "peak"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("la", [0, 4])
def test_output_at_t_ignores_inputs_after_t(la: int, norm: str) -> None:
    """Row t depends on hops <= t only; so the prediction for hop h uses hops <= h + L."""
    m = _model(lookahead_hops=la, norm=norm)
    x = _feats(1, 60)
    p, _ = m(x, m.zero_state(1))
    for t in (0, 10, 30):
        y = x.clone()
        y[:, t + 1 :] = torch.randn_like(y[:, t + 1 :]) * 5
        q, _ = m(y, m.zero_state(1))
        assert torch.allclose(p[:, : t + 1], q[:, : t + 1], atol=1e-6)
        assert not torch.allclose(p[:, t + 1 :], q[:, t + 1 :], atol=1e-4)  # later rows do change


@pytest.mark.parametrize("norm", NORMS)
def test_streaming_equals_whole_sequence(norm: str) -> None:
    m = _model(lookahead_hops=3, norm=norm)
    x = _feats(3, 173, seed=1)
    whole, s_whole = m(x, m.zero_state(3))
    state, rows, a = m.zero_state(3), [], 0
    for n in (1, 2, 2, 7, 1, 40, 3, 117):
        p, state = m(x[:, a : a + n], state)
        rows.append(p)
        a += n
    assert a == 173
    assert torch.allclose(torch.cat(rows, 1), whole, atol=1e-5)
    assert torch.allclose(state, s_whole, atol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_states_batch_across_streams(norm: str) -> None:
    """Two streams at different points in time, stacked in one call == separate calls."""
    m = _model(norm=norm)
    a, b = _feats(1, 50, seed=2), _feats(1, 80, seed=3)
    _, sa = m(a[:, :30], m.zero_state(1))
    _, sb = m(b[:, :70], m.zero_state(1))
    pa, na = m(a[:, 30:32], sa)
    pb, nb = m(b[:, 70:72], sb)
    pab, nab = m(torch.cat([a[:, 30:32], b[:, 70:72]]), torch.cat([sa, sb]))
    assert torch.allclose(pab, torch.cat([pa, pb]), atol=1e-6)
    assert torch.allclose(nab, torch.cat([na, nb]), atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_gain_invariance(norm: str) -> None:
    """A constant added to every log-mel (a gain change) does not change the output."""
    m = _model(norm=norm)
    x = _feats(1, 90, seed=4)
    p, _ = m(x, m.zero_state(1))
    q, _ = m(x + 2.5, m.zero_state(1))
    assert torch.allclose(p, q, atol=1e-4)


def test_meanvar_scales_by_the_window_variance() -> None:
    """"meanvar" divides each mel's deviation by its (shrunk) spread over the window: twice the
    spread gives nearly the same input once the window is full, where "mean" doubles it, and the
    result has about the spread "mean" gives speech of var_prior."""
    def norm_input(norm: str, x: torch.Tensor) -> torch.Tensor:
        m = _model(norm=norm, var_prior_hops=5)
        bufs = m._split(m.zero_state(1))
        return m.normalise(x.transpose(1, 2), bufs[0])[0]

    x = _feats(1, 200, seed=5)  # per-mel std 3 nats
    mean = x.mean(dim=1, keepdim=True)
    wide = mean + 2.0 * (x - mean)
    a, b = norm_input("meanvar", x), norm_input("meanvar", wide)
    late = slice(120, None)
    assert torch.allclose(b[..., late], a[..., late], rtol=0.1, atol=0.05)
    am, bm = norm_input("mean", x), norm_input("mean", wide)
    assert torch.allclose(bm[..., late], 2.0 * am[..., late], atol=1e-3)
    # unit-ish spread after a full window: var_prior 5 nats^2 maps to input_scale * deviation
    assert 0.8 < float(a[..., late].std() / (0.2 * (x - mean).std() * (5.0 / 9.0) ** 0.5)) < 1.25
    with pytest.raises(ValueError, match="var_prior must be > 0"):
        ModelConfig(var_prior=0.0)
    with pytest.raises(ValueError, match="'meanvar'"):
        ModelConfig(norm="rms")


def test_checkpoint_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = _model(hidden=32, channels=16)
    save_checkpoint(tmp_path / "m.pt", m)
    m2 = load_checkpoint(tmp_path / "m.pt")
    x = _feats(1, 20)
    assert torch.equal(m(x, m.zero_state(1))[0], m2(x, m2.zero_state(1))[0])


def test_bad_config_names_the_value() -> None:
    with pytest.raises(ValueError, match="lookahead_hops must be >= 0, got -1"):
        ModelConfig(lookahead_hops=-1)
    with pytest.raises(ValueError, match="conv_layers"):
        ModelConfig(conv_layers=3)
