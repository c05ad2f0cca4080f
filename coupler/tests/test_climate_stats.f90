!> Reads a window and a reference from the file named on the command line and prints what
!> climate_stats makes of them, for tests/test_climate_criteria.py to compare with
!> harness/climate.py. File: ncol nsamp / values (column-major, ncol x nsamp) / nbins / edges
!> (nbins - 1) / ref_pdf (nbins) / nlags / lags / ref_acf (nlags) / n rows nwaves / a field
!> (column-major, n x rows). Output: the Hellinger distance, the acf distance, the acf, then
!> the field's power spectrum (wavenumbers 1 .. nwaves), one number a line.
program test_climate_stats
  use, intrinsic :: iso_fortran_env, only: dp => real64
  use climate_stats, only: hellinger_distance, window_acf, acf_distance, dft_tables, &
                           power_spectrum_accumulate
  implicit none
  integer :: u, ncol, nsamp, nbins, nlags, i, n, rows, nwaves
  real(dp), allocatable :: values(:, :), edges(:), ref_pdf(:), ref_acf(:), acf(:), field(:, :), &
                           cos_t(:, :), sin_t(:, :), spec(:)
  integer, allocatable :: lags(:)
  character(len=4096) :: path
  call get_command_argument(1, path)
  open (newunit=u, file=trim(path), status='old', action='read')
  read (u, *) ncol, nsamp
  allocate (values(ncol, nsamp))
  read (u, *) values
  read (u, *) nbins
  allocate (edges(nbins - 1), ref_pdf(nbins))
  read (u, *) edges
  read (u, *) ref_pdf
  read (u, *) nlags
  allocate (lags(nlags), ref_acf(nlags))
  read (u, *) lags
  read (u, *) ref_acf
  read (u, *) n, rows, nwaves
  allocate (field(n, rows), cos_t(n, nwaves), sin_t(n, nwaves), spec(nwaves))
  read (u, *) field
  close (u)
  call dft_tables(n, cos_t, sin_t)
  spec = 0
  call power_spectrum_accumulate(field, cos_t, sin_t, spec)
  acf = window_acf(values, lags)
  print '(es25.17)', hellinger_distance(values, edges, ref_pdf)
  print '(es25.17)', acf_distance(acf, ref_acf)
  do i = 1, nlags
    print '(es25.17)', acf(i)
  end do
  do i = 1, nwaves
    print '(es25.17)', spec(i)
  end do
end program test_climate_stats
