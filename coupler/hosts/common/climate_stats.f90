!> Window statistics that compare a coupled run's climate with the truth's beyond its mean and
!> standard deviation: the Hellinger distance between the distribution of a window's values and
!> the truth's, and the lag autocorrelation of the window's series with its distance from the
!> truth's. A run that collapses onto a regular wave can keep a plausible mean and spread; its
!> distribution (two peaks at the wave's extremes) and its autocorrelation (near +-1 at lags
!> where chaos has forgotten) give it away. For 2-D fields, the power spectrum along a periodic
!> direction and its log distance from the truth's. harness/climate.py computes the same statistics
!> for the calibration on truth runs; tests/test_climate_criteria.py holds the two together.
module climate_stats
  use, intrinsic :: iso_fortran_env, only: dp => real64
  implicit none
  private

  public :: MAX_PDF_BINS, MAX_ACF_LAGS
  public :: pdf_bin, hellinger_distance, pdf_accumulate, hellinger_from_counts, &
            window_acf, acf_distance, dft_tables, power_spectrum_accumulate, &
            spectrum_distance, distance_z, pdf_reference_ok, MAX_SPEC_WAVES

  integer, parameter :: MAX_PDF_BINS = 64   !< bins of a climate pdf (namelist array bounds)
  integer, parameter :: MAX_ACF_LAGS = 16   !< lags of an autocorrelation criterion
  integer, parameter :: MAX_SPEC_WAVES = 256 !< wavenumbers of a spectrum criterion

contains

  !> The bin of a value: 1 + the number of interior edges <= value (values below the first
  !> edge fall into bin 1, above the last into the last bin: the tails are open).
  pure integer function pdf_bin(value, edges) result(bin)
    real(dp), intent(in) :: value
    real(dp), intent(in) :: edges(:)      !! ascending interior edges (n_bins - 1)
    integer :: lo, hi, mid
    lo = 0
    hi = size(edges)
    do while (lo < hi)                    ! the count of edges <= value, by bisection
      mid = (lo + hi + 1) / 2
      if (edges(mid) <= value) then
        lo = mid
      else
        hi = mid - 1
      end if
    end do
    bin = lo + 1
  end function pdf_bin

  !> Whether a reference pdf is usable: finite ascending interior edges, probabilities >= 0
  !> summing to 1.
  pure logical function pdf_reference_ok(edges, ref_pdf) result(ok)
    real(dp), intent(in) :: edges(:)      !! n_bins - 1
    real(dp), intent(in) :: ref_pdf(:)    !! n_bins
    integer :: n
    n = size(edges)
    ok = size(ref_pdf) == n + 1 .and. all(abs(edges) <= huge(1.0_dp)) .and. &
         all(edges(2:n) > edges(1:n - 1)) .and. all(ref_pdf >= 0) .and. &
         abs(sum(ref_pdf) - 1) < 1e-6_dp
  end function pdf_reference_ok

  !> Hellinger distance (0: the same distribution, 1: disjoint) between the histogram of
  !> all values (every column's samples) on the bins and a reference pdf.
  pure function hellinger_distance(values, edges, ref_pdf) result(h)
    real(dp), intent(in) :: values(:, :)  !! (columns, samples)
    real(dp), intent(in) :: edges(:)      !! ascending interior edges (n_bins - 1)
    real(dp), intent(in) :: ref_pdf(:)    !! the reference's bin probabilities (n_bins)
    real(dp) :: h
    real(dp) :: counts(size(ref_pdf))
    counts = 0
    call pdf_accumulate(values, edges, counts)
    h = hellinger_from_counts(counts, ref_pdf)
  end function hellinger_distance

  !> Adds the values' bin counts to counts (a window's histogram, sample by sample).
  pure subroutine pdf_accumulate(values, edges, counts)
    real(dp), intent(in) :: values(:, :)
    real(dp), intent(in) :: edges(:)
    real(dp), intent(inout) :: counts(:)  !! n_bins
    integer :: i, j, bin
    do j = 1, size(values, 2)
      do i = 1, size(values, 1)
        bin = pdf_bin(values(i, j), edges)
        counts(bin) = counts(bin) + 1
      end do
    end do
  end subroutine pdf_accumulate

  !> Hellinger distance between the histogram with these counts and a reference pdf.
  pure real(dp) function hellinger_from_counts(counts, ref_pdf) result(h)
    real(dp), intent(in) :: counts(:), ref_pdf(:)
    h = sqrt(max(0.0_dp, 1 - sum(sqrt(counts / max(sum(counts), 1.0_dp) * ref_pdf))))
  end function hellinger_from_counts

  !> Autocorrelation at the lags (in samples) of each column's series about its own window
  !> mean (the biased estimator: the sum over the n - lag pairs over the sum of squares),
  !> averaged over the columns. A column that does not vary in the window counts as fully correlated.
  pure function window_acf(series, lags) result(acf)
    real(dp), intent(in) :: series(:, :)  !! (columns, samples), in time order
    integer, intent(in) :: lags(:)        !! each in 1 .. samples - 1
    real(dp) :: acf(size(lags))
    real(dp) :: m, v, a(size(series, 2))
    integer :: c, l, n
    n = size(series, 2)
    acf = 0
    do c = 1, size(series, 1)
      m = sum(series(c, :)) / n
      a = series(c, :) - m
      v = sum(a**2)
      do l = 1, size(lags)
        if (v > 0) then
          acf(l) = acf(l) + sum(a(1:n - lags(l)) * a(1 + lags(l):n)) / v
        else
          acf(l) = acf(l) + 1
        end if
      end do
    end do
    acf = acf / size(series, 1)
  end function window_acf

  !> Root-mean-square difference of two autocorrelation functions over their lags.
  pure real(dp) function acf_distance(acf, ref_acf) result(d)
    real(dp), intent(in) :: acf(:), ref_acf(:)
    d = sqrt(sum((acf - ref_acf)**2) / max(size(acf), 1))
  end function acf_distance

  !> The DFT tables of a periodic direction of n points for wavenumbers 1 .. size(cos_t, 2):
  !> cos_t(i, k) = cos(2 pi k (i - 1) / n), sin_t likewise.
  pure subroutine dft_tables(n, cos_t, sin_t)
    integer, intent(in) :: n
    real(dp), intent(out) :: cos_t(:, :), sin_t(:, :)
    real(dp), parameter :: TWO_PI = 6.28318530717958647692_dp
    integer :: i, k
    do k = 1, size(cos_t, 2)
      do i = 1, n
        ! the phase reduced to one period first: exact tables for any n
        cos_t(i, k) = cos(TWO_PI * modulo(k * (i - 1), n) / n)
        sin_t(i, k) = sin(TWO_PI * modulo(k * (i - 1), n) / n)
      end do
    end do
  end subroutine dft_tables

  !> Adds the power |F_k|^2 / n^2 of each row's DFT along the first (periodic) dimension,
  !> wavenumbers 1 .. size(spec), summed over the rows, to spec.
  pure subroutine power_spectrum_accumulate(field, cos_t, sin_t, spec)
    real(dp), intent(in) :: field(:, :)   !! (n, rows)
    real(dp), intent(in) :: cos_t(:, :), sin_t(:, :)   !! dft_tables(n, ...)
    real(dp), intent(inout) :: spec(:)
    real(dp) :: re, im
    integer :: j, k, n
    n = size(field, 1)
    do j = 1, size(field, 2)
      do k = 1, size(spec)
        re = sum(field(:, j) * cos_t(:, k))
        im = sum(field(:, j) * sin_t(:, k))
        spec(k) = spec(k) + (re**2 + im**2) / real(n, dp)**2
      end do
    end do
  end subroutine power_spectrum_accumulate

  !> Root-mean-square of log10(spectrum / reference) over the wavenumbers: 0.3 is a factor of
  !> two throughout. A wavenumber with no power counts as 1e-300.
  pure real(dp) function spectrum_distance(spec, ref_spec) result(d)
    real(dp), intent(in) :: spec(:), ref_spec(:)
    d = sqrt(sum(log10(max(spec, 1e-300_dp) / ref_spec)**2) / max(size(spec), 1))
  end function spectrum_distance

  !> A window's distance as a z-score against truth windows: on the distance to the power 2/3
  !> (Wilson-Hilferty: these distances are roots of sums of squares, about chi-square, whose
  !> cube root is about normal; the raw distances are right-skewed, so a z-score on them would
  !> put false alarms in the tail the threshold is meant to keep clean).
  elemental real(dp) function distance_z(d, mean, sd) result(z)
    real(dp), intent(in) :: d       !! the window's distance
    real(dp), intent(in) :: mean, sd  !! of d**(2/3) over truth windows
    z = (max(d, 0.0_dp)**(2.0_dp / 3) - mean) / sd
  end function distance_z

end module climate_stats
