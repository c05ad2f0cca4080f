!> A toy host in Fortran with a GCM's physics-driver pattern: an OpenMP loop over column chunks,
!> each thread calling colnn_coupler_run for its own chunks (with the chunk's global column and
!> the step, so an ensemble's input noise does not depend on the chunking or the threads). It
!> runs the same step serially too and checks that both give the same bits.
!> Usage: fortran_host NAMELIST N_INPUTS N_OUTPUTS N_COLUMNS PCOLS THREADS
program fortran_host
  use colnn_coupler, only: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize
  use colnn, only: wp
  implicit none
  character(len=1024) :: config, arg, errmsg
  integer :: n_in, n_out, ncol, pcols, threads, errflg, i, j, c, n_chunks, m, failed, bad
  real(wp), allocatable :: state(:, :), serial(:, :), threaded(:, :)

  if (command_argument_count() /= 6) then
    print '(a)', 'usage: fortran_host NAMELIST N_INPUTS N_OUTPUTS N_COLUMNS PCOLS THREADS'
    stop 2
  end if
  call get_command_argument(1, config)
  call get_command_argument(2, arg); read (arg, *) n_in
  call get_command_argument(3, arg); read (arg, *) n_out
  call get_command_argument(4, arg); read (arg, *) ncol
  call get_command_argument(5, arg); read (arg, *) pcols
  call get_command_argument(6, arg); read (arg, *) threads
  call colnn_coupler_init(trim(config), n_in, n_out, errmsg, errflg)
  if (errflg /= 0) then
    print '(a)', 'init failed: '//trim(errmsg)
    stop 1
  end if
  allocate (state(n_in, ncol), serial(n_out, ncol), threaded(n_out, ncol))
  do j = 1, ncol
    do i = 1, n_in
      state(i, j) = real(0.01_wp * mod((i - 1) * 7 + (j - 1) * 3, 23) - 0.1_wp, wp)
    end do
  end do
  n_chunks = (ncol + pcols - 1) / pcols
  failed = 0
  do c = 1, n_chunks
    call chunk(c, serial, bad)
    failed = failed + bad
  end do
  !$omp parallel do schedule(dynamic) num_threads(threads) private(bad) reduction(+:failed)
  do c = 1, n_chunks
    call chunk(c, threaded, bad)
    failed = failed + bad
  end do
  !$omp end parallel do
  call colnn_coupler_finalize(errmsg, errflg)
  if (failed > 0) stop 1
  m = count(any(threaded /= serial, dim=1))
  print '(i0,a,i0,a,i0,a)', m, ' of ', ncol, ' columns differ from the serial loop (', threads, &
    ' threads)'
  if (m > 0) stop 1
contains
  subroutine chunk(c, out, bad)
    integer, intent(in) :: c
    real(wp), intent(inout) :: out(:, :)
    integer, intent(out) :: bad
    character(len=1024) :: msg
    integer :: flag, first, cols
    first = (c - 1) * pcols + 1
    cols = min(pcols, ncol - first + 1)
    call colnn_coupler_run(state(:, first:first + cols - 1), out(:, first:first + cols - 1), &
                           msg, flag, column_offset=first - 1, step=1)
    bad = 0
    if (flag /= 0) then
      !$omp critical
      print '(a,i0,a)', 'run failed at column ', first, ': '//trim(msg)
      !$omp end critical
      bad = 1
    end if
  end subroutine chunk
end program fortran_host
