"""The probe's statistics against independent computations: Moran's I and its permutation test, pinwheel
counting on maps with known pinwheels, OSI / circular variance on analytic tuning curves, selectivity, patches."""
import numpy as np
import pytest
import torch
from scipy import stats as sps

from topotorch.layout import grid
from topotorch.probe import stats as S
from topotorch.probe import vision as V
from topotorch.topography import retinotopic


def _dense_morans(x, c, radius=1.0):
    """Independent Moran's I: dense queen weights (every pair compared), row-standardised."""
    n = len(x)
    W = (np.abs(c[:, None, :] - c[None, :, :]).max(-1) <= radius + 1e-9).astype(float)
    np.fill_diagonal(W, 0.0)
    W /= np.maximum(W.sum(1, keepdims=True), 1e-300)
    z = x - x.mean()
    return n / W.sum() * (z @ W @ z) / (z @ z)


@pytest.mark.parametrize("layout", ["grid", "retinotopic"])
def test_morans_i_and_permutation_p_match_a_direct_numpy_permutation_test(layout):
    rs = np.random.RandomState(3)
    lay = grid(9, 11, spacing=1.0) if layout == "grid" else retinotopic(4, 6, 6, seed=1)
    c = lay.unit_coords.numpy()
    x = rs.randn(len(c)) + 1.2 * np.sin(c[:, 0] / 3)  # a spatial trend under noise
    got = S.morans_i_test(x, lay, permutations=199, seed=5)
    assert got["i"] == pytest.approx(_dense_morans(x, c), abs=1e-12)
    perm = np.random.RandomState(5)
    null = np.array([_dense_morans(x[perm.permutation(len(x))], c) for _ in range(199)])
    assert got["null_mean"] == pytest.approx(null.mean(), abs=1e-12)
    assert got["p_value"] == pytest.approx((1 + (null >= got["i"]).sum()) / 200)
    assert got["p_value"] < 0.05  # the trend is found


@pytest.mark.parametrize("layout", ["grid", "retinotopic"])
def test_several_maps_share_one_set_of_shuffles_and_each_matches_a_direct_permutation_test(layout):
    # a category probe tests one map per category, raw and smoothed, against one draw of the shuffles
    rs = np.random.RandomState(4)
    lay = grid(9, 11, spacing=1.0) if layout == "grid" else retinotopic(4, 6, 6, seed=1)
    c = lay.unit_coords.numpy()
    maps = [rs.randn(len(c)) + a * np.sin(c[:, 0] / 3) for a in (0.0, 0.8, 2.0)]
    got = S.morans_i_tests(maps, lay, permutations=70, seed=2, fwhms=(None, 2.0))  # 70: a last chunk of 6
    for k, x in enumerate(maps):
        perm = np.random.RandomState(2)
        shuffles = [x[perm.permutation(len(x))] for _ in range(70)]
        raw = np.array([_dense_morans(z, c) for z in shuffles])
        smooth = np.array([_dense_morans(S.smooth_map(z, lay, 2.0), c) for z in shuffles])
        assert got[0][k]["i"] == pytest.approx(_dense_morans(x, c), abs=1e-12)
        assert got[1][k]["i"] == pytest.approx(_dense_morans(S.smooth_map(x, lay, 2.0), c), abs=1e-12)
        np.testing.assert_allclose(got[0][k]["null"], raw, atol=1e-12)
        np.testing.assert_allclose(got[1][k]["null"], smooth, atol=1e-10)
        assert got[0][k]["p_value"] == pytest.approx((1 + (raw >= got[0][k]["i"] - 1e-12).sum()) / 71)
        one = S.morans_i_test(x, lay, 70, 2, fwhm=2.0)
        assert one["i"] == got[1][k]["i"] and np.array_equal(one["null"], got[1][k]["null"])


def test_random_map_is_not_significant_and_smoothing_lifts_the_null():
    lay = grid(20, 20, spacing=1.0)
    x = np.random.RandomState(0).randn(400)
    raw, sm = S.morans_i_test(x, lay, 199), S.morans_i_test(x, lay, 199, fwhm=2.0)
    assert raw["p_value"] > 0.05 and abs(raw["null_mean"]) < 0.02
    assert sm["null_mean"] > 0.4 and sm["i"] == pytest.approx(S.morans_i(S.smooth_map(x, lay, 2.0), lay))
    assert sm["p_value"] > 0.05  # smoothing alone is not topography


def _pinwheel_field(h, w, centres):
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    z = np.ones((h, w), complex)
    for r, c, q in centres:
        d = (xx - c) + 1j * (yy - r)
        z *= d if q > 0 else np.conj(d)
    return z


@pytest.mark.parametrize("seed", range(5))
def test_pinwheels_of_a_map_with_known_pinwheels_are_counted_exactly(seed):
    rs = np.random.RandomState(seed)
    k = rs.randint(1, 7)
    centres = []
    while len(centres) < k:  # centres off the pixel grid and apart
        r, c = rs.uniform(3, 37), rs.uniform(3, 47)
        if all(np.hypot(r - a, c - b) > 4 for a, b, _ in centres):
            centres.append((r, c, rs.choice([-1, 1])))
    found = V.count_pinwheels(_pinwheel_field(40, 50, centres))
    assert len(found) == k
    for r, c, q in centres:  # each one in the plaquette that holds it, with its sign
        assert any(abs(fr - r) <= 0.5 and abs(fc - c) <= 0.5 and fq == q for fr, fc, fq in found)
    z = _pinwheel_field(40, 50, centres)
    z[:5, :5] = np.nan  # masked pixels are left out, never counted
    d = V.pinwheel_density(z, spacing=10.0)
    assert d["pinwheels"] == sum(1 for r, c, _ in centres if not (r < 5.5 and c < 5.5))
    assert d["density"] == pytest.approx(d["pinwheels"] * 100.0 / d["area"])


def test_column_spacing_of_a_plane_wave_is_its_wavelength():
    yy, xx = np.mgrid[0:64, 0:64]
    z = np.exp(2j * np.pi * xx / 8.0)  # orientation columns 8 pixels apart
    assert V.column_spacing(z) == pytest.approx(8.0, rel=1e-6)
    assert V.count_pinwheels(z) == []


def test_osi_and_circular_variance_equal_a_hand_computation_on_analytic_tuning_curves():
    ori = np.arange(8) * 22.5
    base, amp, pref = np.array([0.2, 1.0, 0.0]), np.array([1.0, 0.5, 2.0]), np.array([45.0, 112.5, 0.0])
    curves = base[:, None] + amp[:, None] * np.cos(np.deg2rad(ori[None] - pref[:, None])) ** 2
    got = V.tuning_from_curves(curves, ori)
    # r = b + a cos²(θ − θ0) = (b + a/2) + (a/2) cos 2(θ − θ0): over 8 even orientations Σ r e^{2iθ} = 8 (a/4) e^{2iθ0}
    assert np.allclose(got["circular_variance"], 1 - (amp / 4) / (base + amp / 2))
    assert np.allclose(got["osi"], amp / (2 * base + amp))  # (r(θ0) − r(θ0 + 90°)) / (r(θ0) + r(θ0 + 90°))
    assert np.allclose(got["preferred"], pref)


def test_oriented_filters_are_found_at_their_orientation_by_the_grating_probe():
    size = 16
    g = V.gratings(size, channels=1, frequencies=[1.5, 3.0, 4.0])
    conv = torch.nn.Conv2d(1, 8, size, bias=False)
    want = np.arange(8) * 22.5
    with torch.no_grad():  # unit k: a grating filter at orientation want[k], 3 cycles per image
        filt = V.gratings(size, 1, orientations=8, frequencies=[3.0], phases=1).images[:, 0] - 0.5
        conv.weight.copy_(filt[:, None])
    model = torch.nn.Sequential(conv)
    from topotorch.probe.sheets import Sheet
    sh = Sheet("0", conv, grid(2, 4, spacing=1.0), "channels")
    model.train()
    resp = V.sheet_responses(model, [sh], g.images)["0"].numpy()
    assert model.training  # mode restored
    tun = V.orientation_tuning(resp, g)
    diff = np.abs((tun["preferred"] - want + 90) % 180 - 90)
    assert (tun["curves"].argmax(1) == np.arange(8)).all() and (tun["preferred_frequency"] == 3.0).all()
    assert diff.max() < 11.25 and (tun["osi"] > 0.5).all()  # the vector sum: within half a step (pixelated filters)


def test_category_selectivity_is_welch_t_and_patches_are_connected_blobs():
    rs = np.random.RandomState(0)
    lay = grid(16, 16, spacing=1.0)
    c = lay.unit_coords.numpy()
    blob = (np.hypot(c[:, 0] - 4, c[:, 1] - 4) < 3) | (np.hypot(c[:, 0] - 11, c[:, 1] - 11) < 3)
    y = np.repeat([0, 1], 40)
    resp = rs.rand(80, 256) + 1.5 * blob[None] * (y[:, None] == 0)
    res = V.category_selectivity(resp, y, ["face", "other"], lay, permutations=99)
    t = sps.ttest_ind(resp[y == 0], resp[y == 1], equal_var=False).statistic
    assert np.allclose(res["face"]["t_map"], t)
    assert res["face"]["patches"] == 2 and res["face"]["p_value"] < 0.05
    assert res["other"]["patches"] == 0
    with pytest.raises(ValueError, match="at least two"):
        V.category_images((torch.rand(4, 1, 8, 8), np.zeros(4, int)), 8, 1)


def test_sparse_statistics_scale_to_a_tdann_sized_sheet():
    lay = retinotopic(128, 28, 28, seed=0)  # 100,352 units: a dense n² matrix would need 80 GB
    x = np.random.RandomState(0).randn(lay.n)
    res = S.morans_i_test(x, lay, permutations=9)
    assert abs(res["i"]) < 0.02 and res["p_value"] > 0.05


@pytest.mark.parametrize("kind", ["conv", "local", "linear"])
def test_connections_are_the_layers_jacobian(kind):
    from topotorch.locally_connected import LocallyConnected2d
    torch.manual_seed(0)
    shape = (2, 5, 6)
    mod = {"conv": torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False),
           "local": LocallyConnected2d(2, 3, (5, 6), 3, padding=1, bias=False),
           "linear": torch.nn.Linear(60, 7, bias=False)}[kind]
    x = torch.randn(1, *shape)
    f = (lambda v: mod(v.view(1, *shape)).flatten()) if kind != "linear" else (lambda v: mod(v[None])[0])
    J = torch.autograd.functional.jacobian(f, x.flatten()).abs().numpy()
    d, s, w = S.connections(mod, shape if kind != "linear" else None)
    M = np.zeros_like(J)
    np.add.at(M, (d, s), w)
    assert np.allclose(M, J, atol=1e-6)


def test_wiring_length_equals_a_direct_sum_and_pooled_positions_are_block_means():
    rs = np.random.RandomState(0)
    a, b = rs.rand(6, 2) * 4, rs.rand(5, 2) * 9
    d, s, w = rs.randint(0, 6, 40), rs.randint(0, 5, 40), rs.rand(40)
    got = S.wiring_length(d, s, w, a, b, permutations=19)
    an, bn = (a - a.min(0)) / np.ptp(a, 0), (b - b.min(0)) / np.ptp(b, 0)
    want = sum(wk * np.linalg.norm(an[dk] - bn[sk]) for dk, sk, wk in zip(d, s, w)) / w.sum()
    assert got["length"] == pytest.approx(want) and got["ratio"] == pytest.approx(want / got["null"])
    c = np.arange(2 * 4 * 4 * 2, dtype=float).reshape(-1, 2)
    p = S.pooled_positions(c, 2, 4, 4, 2, 2)
    assert np.allclose(p[0], c.reshape(2, 4, 4, 2)[0, :2, :2].mean((0, 1)))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_pair_distance_equals_the_row_gather_to_the_last_bit(dim):
    # the fast path of every distance-binned curve (correlation vs distance, smoothness, wiring length): the
    # published figures must not move when the arithmetic is reorganised
    rs = np.random.RandomState(dim)
    a, b = rs.randn(400, dim) * 37.0, rs.rand(250, dim)
    i, j = rs.randint(0, 400, 50_000), rs.randint(0, 250, 50_000)
    assert np.array_equal(S.pair_distance(a, i, b, j), np.sqrt(((a[i] - b[j]) ** 2).sum(1)))
    k, m = np.triu_indices(400, 1)
    assert np.array_equal(S.pair_distance(a, k, a, m), np.sqrt(((a[k] - a[m]) ** 2).sum(1)))


@pytest.mark.parametrize("layout", ["grid", "retinotopic"])
def test_smoothing_many_maps_or_block_by_block_equals_smoothing_each_with_the_whole_kernel(layout, monkeypatch):
    # a wide kernel on a large sheet (TDANN's patch smoothing at 4 % of a 200k-unit sheet) cannot be held whole
    lay = grid(18, 15, spacing=1.0) if layout == "grid" else retinotopic(9, 10, 10, seed=3)
    Z = np.random.RandomState(5).randn(lay.n, 4)
    one_by_one = np.stack([S.smooth_map(Z[:, k], lay, 5.0) for k in range(4)], 1)
    assert np.array_equal(S.smooth_maps(Z, lay, 5.0), one_by_one)
    if layout == "retinotopic":
        monkeypatch.setattr(S, "KERNEL_ENTRIES", 500)  # blocks of a few units
        smoother = S._GaussSmoother(lay.unit_coords.numpy(), 5.0 / (2 * np.sqrt(2 * np.log(2))))
        assert smoother.K is None
        np.testing.assert_allclose(smoother(Z), one_by_one, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(S.smooth_map(Z[:, 0], lay, 5.0), one_by_one[:, 0], rtol=1e-13, atol=1e-13)


def test_scattered_smoothing_is_the_gaussian_weighted_mean_of_the_units_within_four_sigma(monkeypatch):
    # an independent dense computation: every unit within 4σ (itself and coincident units included) weighs
    # exp(−d²/2σ²) — the unit itself once, not twice
    rs = np.random.RandomState(0)
    c = rs.rand(80, 2) * 6
    c[1] = c[0]
    x, sigma = rs.randn(80), 0.7
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
    W = np.where(d <= 4 * sigma, np.exp(-0.5 * (d / sigma) ** 2), 0.0)
    want = W @ x / W.sum(1)
    fwhm = sigma * 2 * np.sqrt(2 * np.log(2))
    np.testing.assert_allclose(S.smooth_map(x, c, fwhm), want, rtol=0, atol=1e-13)
    monkeypatch.setattr(S, "KERNEL_ENTRIES", 10)  # block by block
    np.testing.assert_allclose(S.smooth_map(x, c, fwhm), want, rtol=0, atol=1e-13)
