"""Window statistics of a run's climate beyond mean and standard deviation, as the hosts compute
them (coupler/hosts/common/climate_stats.f90; tests/test_climate_criteria.py holds the two
together): the Hellinger distance between the distribution of a window's values and the
truth's, and the distance between the window's lag autocorrelation and the truth's. The
plugins calibrate them on truth runs: a window's distance becomes a one-sided z-score against
the same distance over truth windows (taken on the distance to the power 2/3: ``normalized``),
which the host tests like the drift test's mean and std."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: the hosts' namelist array bounds (climate_stats.f90)
MAX_PDF_BINS = 64
MAX_ACF_LAGS = 16
MAX_SPEC_WAVES = 256
#: a window's histogram with fewer values a bin is mostly sampling noise: with 10 a bin (160
#: values, 16 bins, 30 calibration windows) the tests' tiny study saw runs of a fine network
#: stopped by the distribution test; the defaults (800 values, 16 bins) give 50
MIN_VALUES_PER_BIN = 20


def padded(values: list, size: int, fill: float | int = 0.0) -> list:
    """A host's fixed-bound namelist array: the values, then fill (its n_* key says how many
    are used)."""
    return list(values) + [fill] * (size - len(values))


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior edges (n_bins - 1) that split the values into bins of equal probability: each
    bin holds about as many truth samples, so no bin's count is too small to compare."""
    qs = np.quantile(np.asarray(values, float).ravel(), np.arange(1, n_bins) / n_bins)
    if np.any(np.diff(qs) <= 0):
        raise ValueError(f"{n_bins} bins: the values have too few distinct levels for "
                         f"equal-probability bins (repeated quantiles)")
    return qs


def histogram_pdf(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin probabilities with open tails (below the first edge: bin 1; above the last: the last)."""
    bins = np.searchsorted(edges, np.asarray(values, float).ravel(), side="right")
    counts = np.bincount(bins, minlength=edges.size + 1).astype(float)
    return counts / max(counts.sum(), 1.0)


def hellinger_distance(values: np.ndarray, edges: np.ndarray, ref_pdf: np.ndarray) -> float:
    """0 for the same distribution, 1 for disjoint ones."""
    p = histogram_pdf(values, edges)
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(p * ref_pdf)))))


def window_acf(series: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """series (columns, samples): each column's autocorrelation about its own window mean at
    the lags (in samples; the biased estimator), averaged over the columns; a column that does
    not vary counts as fully correlated."""
    a = series - series.mean(axis=1, keepdims=True)
    v = np.sum(a ** 2, axis=1)
    n = series.shape[1]
    out = np.empty(len(lags))
    for i, lag in enumerate(lags):
        num = np.sum(a[:, : n - lag] * a[:, lag:], axis=1)
        out[i] = np.mean(np.where(v > 0, num / np.where(v > 0, v, 1.0), 1.0))
    return out


def normalized(distance: np.ndarray | float) -> np.ndarray:
    """A distance to the power 2/3, where the z-scores are taken (climate_stats.f90's distance_z:
    a root of a sum of squares is about chi-square's root; Wilson-Hilferty's cube root of the
    square is about normal, the raw distance is right-skewed)."""
    return np.maximum(np.asarray(distance, float), 0.0) ** (2.0 / 3.0)


def distance_z(distance: float, mean: float, sd: float) -> float:
    return float((normalized(distance) - mean) / sd)


def acf_distance(acf: np.ndarray, ref_acf: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(acf) - np.asarray(ref_acf)) ** 2)))


@dataclass
class ClimateCalibration:
    """The truth's pdf and autocorrelation and the spread of the windows' distances from them."""

    pdf_edges: list[float]
    clim_pdf: list[float]
    pdf_dist_mean: float
    pdf_dist_sd: float
    acf_lags: list[int]          # in samples of the window
    clim_acf: list[float]
    acf_dist_mean: float
    acf_dist_sd: float

    def as_dict(self) -> dict:
        return asdict(self)

    def z_scores(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """windows (n, columns, samples) -> the z-scores of their pdf and acf distances."""
        edges, pdf = np.asarray(self.pdf_edges), np.asarray(self.clim_pdf)
        lags = np.asarray(self.acf_lags, int)
        zp = np.array([distance_z(hellinger_distance(w, edges, pdf), self.pdf_dist_mean,
                                  self.pdf_dist_sd) for w in windows]) \
            if pdf.size else np.full(len(windows), np.nan)
        za = np.array([distance_z(acf_distance(window_acf(w, lags), self.clim_acf),
                                  self.acf_dist_mean, self.acf_dist_sd) for w in windows]) \
            if lags.size else np.full(len(windows), np.nan)
        return zp, za


def _pdf_reference(windows: list[np.ndarray], n_bins: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The truth's equal-probability bins and pdf over all windows' values, and each window's
    normalized distance from it (n_bins = 0: off, empty, with a placeholder spread)."""
    if not n_bins:
        return np.empty(0), np.empty(0), np.zeros(2)
    per_window = min(np.size(w) for w in windows)
    if per_window < MIN_VALUES_PER_BIN * n_bins:
        raise ValueError(f"couple.drift_pdf_bins: {n_bins} bins for {per_window} values a window "
                         f"leave {per_window // n_bins} a bin; the distance needs at least "
                         f"{MIN_VALUES_PER_BIN} a bin to tell a wrong climate from sampling "
                         f"noise (at most {per_window // MIN_VALUES_PER_BIN} bins, or longer "
                         f"windows)")
    values = np.concatenate([np.ravel(w) for w in windows])
    edges = quantile_edges(values, n_bins)
    pdf = histogram_pdf(values, edges)
    return edges, pdf, normalized([hellinger_distance(w, edges, pdf) for w in windows])


def calibrate_climate(windows: np.ndarray, n_bins: int, lags: list[int]) -> ClimateCalibration:
    """windows (n, columns, samples) of a truth run, sampled as the host samples a coupled run.
    n_bins = 0 or no lags: that criterion off (empty arrays)."""
    if windows.shape[0] < 2:
        raise ValueError(f"{windows.shape[0]} window(s): the calibration needs several")
    edges, pdf, dist = _pdf_reference(list(windows), n_bins)
    lag_arr = np.asarray(lags, int)
    if lag_arr.size:
        acfs = np.array([window_acf(w, lag_arr) for w in windows])
        clim_acf = acfs.mean(axis=0)
        adist = normalized([acf_distance(a, clim_acf) for a in acfs])
    else:
        clim_acf, adist = np.empty(0), np.zeros(2)
    return ClimateCalibration(
        pdf_edges=[float(e) for e in edges], clim_pdf=[float(p) for p in pdf],
        pdf_dist_mean=float(dist.mean()), pdf_dist_sd=float(dist.std(ddof=1)),
        acf_lags=[int(lag) for lag in lag_arr], clim_acf=[float(a) for a in clim_acf],
        acf_dist_mean=float(adist.mean()), acf_dist_sd=float(adist.std(ddof=1)))


def power_spectrum(fields: np.ndarray, n_waves: int) -> np.ndarray:
    """Sum over samples and rows of |DFT|^2 / n^2 along the last (periodic) axis, wavenumbers
    1 .. n_waves: fields (samples, rows, n)."""
    n = fields.shape[-1]
    f = np.fft.fft(fields, axis=-1)[..., 1:n_waves + 1]
    return (np.abs(f) ** 2 / n ** 2).reshape(-1, n_waves).sum(axis=0)


def spectrum_distance(spec: np.ndarray, ref_spec: np.ndarray) -> float:
    """RMS over wavenumbers of log10(spectrum / reference); 0.3 is a factor of two throughout."""
    return float(np.sqrt(np.mean(np.log10(np.maximum(spec, 1e-300) / ref_spec) ** 2)))


@dataclass
class FieldClimateCalibration:
    """For 2-D hosts: the truth's pdf of a field over the grid and its kinetic-energy spectrum
    along the periodic direction, and the spread of the windows' distances from them."""

    pdf_edges: list[float]
    clim_pdf: list[float]
    pdf_dist_mean: float
    pdf_dist_sd: float
    clim_ke_spectrum: list[float]     # per sample, row and velocity component
    spec_dist_mean: float
    spec_dist_sd: float

    def as_dict(self) -> dict:
        return asdict(self)

    def z_scores(self, windows: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """windows: [{"h": (samples, rows, n), "u": ..., "v": ...}] -> pdf and spectrum z."""
        edges, pdf = np.asarray(self.pdf_edges), np.asarray(self.clim_pdf)
        ref = np.asarray(self.clim_ke_spectrum)
        zp = np.array([distance_z(hellinger_distance(w["h"], edges, pdf), self.pdf_dist_mean,
                                  self.pdf_dist_sd) if pdf.size else np.nan for w in windows])
        zs = np.array([distance_z(spectrum_distance(window_ke_spectrum(w, ref.size), ref),
                                  self.spec_dist_mean, self.spec_dist_sd) if ref.size else np.nan
                       for w in windows])
        return zp, zs


def window_ke_spectrum(window: dict[str, np.ndarray], n_waves: int) -> np.ndarray:
    """The window's spectrum of u and v, per sample, row and component (as the host keeps it)."""
    samples, rows = window["u"].shape[:2]
    return (power_spectrum(window["u"], n_waves) + power_spectrum(window["v"], n_waves)) \
        / (2 * samples * rows)


def calibrate_field_climate(windows: list[dict[str, np.ndarray]], n_bins: int,
                            n_waves: int) -> FieldClimateCalibration:
    """windows of a truth run ({"h", "u", "v"}: (samples, rows, n) each), sampled as the host
    samples a coupled run; n_bins = 0 or n_waves = 0: that criterion off."""
    if len(windows) < 2:
        raise ValueError(f"{len(windows)} window(s): the calibration needs several")
    edges, pdf, dist = _pdf_reference([w["h"] for w in windows], n_bins)
    if n_waves:
        specs = np.array([window_ke_spectrum(w, n_waves) for w in windows])
        clim = specs.mean(axis=0)
        sdist = normalized([spectrum_distance(s, clim) for s in specs])
    else:
        clim, sdist = np.empty(0), np.zeros(2)
    return FieldClimateCalibration(
        pdf_edges=[float(e) for e in edges], clim_pdf=[float(p) for p in pdf],
        pdf_dist_mean=float(dist.mean()), pdf_dist_sd=float(dist.std(ddof=1)),
        clim_ke_spectrum=[float(s) for s in clim], spec_dist_mean=float(sdist.mean()),
        spec_dist_sd=float(sdist.std(ddof=1)))
