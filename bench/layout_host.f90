!> bench/layout.py's host: one "physics step" over N columns in chunks of PCOLS, the network
!> called per chunk three ways, each timed as the median of ROUNDS steps:
!>   native      (features, columns) arrays in the library's precision (the baseline)
!>   direct      the host's real64 (columns, features) chunk as it is (columns_first=.true.)
!>   transposed  the host transposes and converts each chunk into a (features, columns) buffer
!>               in the library's precision, calls, and transposes the outputs back
!> and the chunk loop on THREADS OpenMP threads (native arrays) against one thread.
!> Usage: layout_host MODEL N_INPUTS N_OUTPUTS N_COLUMNS PCOLS ROUNDS THREADS
program layout_host
  use, intrinsic :: iso_fortran_env, only: real64, int64
  use colnn, only: network_t, wp
  use omp_lib, only: omp_get_wtime
  implicit none
  type(network_t) :: net
  character(len=1024) :: path, arg
  character(len=1024) :: msg
  integer :: n_in, n_out, ncol, pcols, rounds, threads, stat, r, i, j
  real(real64), allocatable :: host_x(:, :), host_y(:, :), times(:, :)
  real(wp), allocatable :: x(:, :), y(:, :), bx(:, :), by(:, :)

  call get_command_argument(1, path)
  call get_command_argument(2, arg); read (arg, *) n_in
  call get_command_argument(3, arg); read (arg, *) n_out
  call get_command_argument(4, arg); read (arg, *) ncol
  call get_command_argument(5, arg); read (arg, *) pcols
  call get_command_argument(6, arg); read (arg, *) rounds
  call get_command_argument(7, arg); read (arg, *) threads
  call net%load(trim(path), stat, msg)
  if (stat /= 0) error stop 'load failed'
  net%check_finite = .false.
  allocate (host_x(ncol, n_in), host_y(ncol, n_out), x(n_in, ncol), y(n_out, ncol))
  allocate (bx(n_in, pcols), by(n_out, pcols), times(rounds, 4))
  do i = 1, n_in
    do j = 1, ncol
      host_x(j, i) = sin(0.1_real64 * i + 0.01_real64 * j)
    end do
  end do
  x = real(transpose(host_x), wp)
  do r = 0, rounds
    times(max(r, 1), 1) = step_native(1)
    times(max(r, 1), 2) = step_direct()
    times(max(r, 1), 3) = step_transposed()
    times(max(r, 1), 4) = step_native(threads)
  end do
  print '(a,4(1x,es12.5))', 'median_s', (median(times(:, i)), i = 1, 4)
contains
  real(real64) function step_native(n_threads) result(t)
    integer, intent(in) :: n_threads
    integer :: j0, m
    character(len=256) :: e
    integer :: s
    t = omp_get_wtime()
    !$omp parallel do schedule(dynamic) num_threads(n_threads) private(m, e, s)
    do j0 = 1, ncol, pcols
      m = min(pcols, ncol - j0 + 1)
      call net%forward(x(:, j0:j0 + m - 1), y(:, j0:j0 + m - 1), s, e)
    end do
    !$omp end parallel do
    t = omp_get_wtime() - t
  end function step_native

  real(real64) function step_direct() result(t)
    integer :: j0, m, s
    character(len=256) :: e
    t = omp_get_wtime()
    do j0 = 1, ncol, pcols
      m = min(pcols, ncol - j0 + 1)
      call net%forward(host_x(j0:j0 + m - 1, :), host_y(j0:j0 + m - 1, :), s, e, &
                       columns_first=.true.)
    end do
    t = omp_get_wtime() - t
  end function step_direct

  real(real64) function step_transposed() result(t)
    integer :: j0, m, s, i, j
    character(len=256) :: e
    t = omp_get_wtime()
    do j0 = 1, ncol, pcols
      m = min(pcols, ncol - j0 + 1)
      do j = 1, m
        do i = 1, n_in
          bx(i, j) = real(host_x(j0 + j - 1, i), wp)
        end do
      end do
      call net%forward(bx(:, 1:m), by(:, 1:m), s, e)
      do i = 1, n_out
        do j = 1, m
          host_y(j0 + j - 1, i) = real(by(i, j), real64)
        end do
      end do
    end do
    t = omp_get_wtime() - t
  end function step_transposed

  real(real64) function median(v)
    real(real64), intent(in) :: v(:)
    real(real64) :: w(size(v)), tmp
    integer :: a, b
    w = v
    do a = 2, size(w)
      tmp = w(a)
      b = a - 1
      do while (b >= 1)
        if (w(b) <= tmp) exit
        w(b + 1) = w(b)
        b = b - 1
      end do
      w(b + 1) = tmp
    end do
    median = w((size(w) + 1) / 2)
  end function median
end program layout_host
